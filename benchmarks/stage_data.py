"""Copy the data of the GPU campaign into the repository, for the device machine.

The device machine gets the working tree (tracked files, untracked files git does not
ignore, and up to 8 git-ignored paths named in ``carry``), at most 64 MiB in all, and
not ``../shared``.  This script writes, into a git-ignored folder of the repository
(default ``data_local/``, already in ``.gitignore``):

- ``cifar10-jpeg.zip``: CIFAR-10 in the layout of ``$JAXODE_DATA/cifar10-jpeg.zip``
  (``cifar10-jpeg/{train,test}/<class>/<NNNN>.jpg``), by default all 50,000 training
  images and a class-balanced 2,000 of the 10,000 test images (the whole archive,
  61 MiB, with the working tree exceeds the limit);
- ``camvid-segnet.zip``: the first `--camvid-train` / `--camvid-val` / `--camvid-test`
  pairs of CamVid's SegNet layout with their ``<split>.txt`` listings (the campaign
  needs one batch of real 360x480 images, not a training set).

Members are copied byte for byte (JPEG and PNG are not re-encoded).  Before writing,
it adds up what would travel (the working tree + the two zips) and refuses, with the
numbers, if that exceeds `--limit-mib` (default 62: 64 MiB less a margin for files
the campaign adds).  Then name the folder in the device tool's ``carry``:
``carry=["data_local"]`` (README, "GPU campaign").

    python -m benchmarks.stage_data                       # from $JAXODE_DATA
    python -m benchmarks.stage_data --src ../shared/data --cifar-test 1000
    python -m benchmarks.stage_data --prev-run /path/to/campaign.tar.gz   # next chunk
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict

MIB = 2**20
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR, CAMVID = "cifar10-jpeg.zip", "camvid-segnet.zip"
PREV = os.path.join("prev", "campaign.tar.gz")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.stage_data",
        description="Copy CIFAR-10 and a CamVid subset from $JAXODE_DATA into a git-ignored "
        "folder of the repository, within the device tool's 64 MiB working-tree limit.")
    p.add_argument("--src", default=os.environ.get("JAXODE_DATA"),
                   help="folder holding cifar10-jpeg.zip and camvid-segnet.zip (default $JAXODE_DATA)")
    p.add_argument("--dest", default=os.path.join(_ROOT, "data_local"),
                   help="git-ignored folder to write (default data_local/ in the repository)")
    p.add_argument("--cifar-train", type=int, default=50000,
                   help="training images, class-balanced (default 50000: all)")
    p.add_argument("--cifar-test", type=int, default=2000,
                   help="test images, class-balanced (default 2000 of 10000)")
    p.add_argument("--camvid-train", type=int, default=24,
                   help="CamVid training pairs (default 24, the paper's Table 2 batch)")
    p.add_argument("--camvid-val", type=int, default=1, help="CamVid validation pairs (default 1)")
    p.add_argument("--camvid-test", type=int, default=1, help="CamVid test pairs (default 1)")
    p.add_argument("--prev-run", default=None,
                   help="an earlier campaign's campaign.tar.gz to copy to DEST/prev/ (the "
                   "next training chunk resumes from it: gpu_campaign --resume-train)")
    p.add_argument("--limit-mib", type=float, default=62.0,
                   help="refuse when working tree + data exceed this (default 62 of the 64 MiB)")
    args = p.parse_args(argv)
    if not args.src:
        p.error("no source folder: pass --src or set JAXODE_DATA to the folder holding "
                f"{CIFAR} and {CAMVID}.")
    for name in (CIFAR, CAMVID):
        if not os.path.isfile(os.path.join(args.src, name)):
            p.error(f"--src {args.src!r} holds no {name}; pass the folder of the offline data.")
    if args.prev_run and not os.path.isfile(args.prev_run):
        p.error(f"argument --prev-run: {args.prev_run!r} is not a file; pass the "
                "campaign.tar.gz an earlier campaign brought back.")
    for k in ("cifar_train", "cifar_test", "camvid_train", "camvid_val", "camvid_test"):
        if getattr(args, k) < 0:
            p.error(f"argument --{k.replace('_', '-')}: must be >= 0, got {getattr(args, k)}.")
    return args


def _balanced(names: list[str], n: int) -> list[str]:
    """The first `n` images of a split taken round-robin over the classes (folder
    ``.../<split>/<class>/<img>``), so every class gets n / classes of them."""
    by_class = defaultdict(list)
    for name in sorted(names):
        by_class[name.split("/")[-2]].append(name)
    out, queues = [], [by_class[c] for c in sorted(by_class)]
    i = 0
    while len(out) < n and any(i < len(q) for q in queues):
        out += [q[i] for q in queues if i < len(q)][: n - len(out)]
        i += 1
    return out


def cifar_members(zf: zipfile.ZipFile, n_train: int, n_test: int) -> list[str]:
    """Member names of the CIFAR-10 subset (class-balanced per split)."""
    splits = defaultdict(list)
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) == 4 and parts[-1]:
            splits[parts[1]].append(name)
    if not splits.get("train") or not splits.get("test"):
        raise ValueError(f"{zf.filename} has no cifar10-jpeg/{{train,test}}/<class>/ images.")
    return _balanced(splits["train"], n_train) + _balanced(splits["test"], n_test)


def camvid_members(zf: zipfile.ZipFile, counts: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    """(image and label members, {listing member: new listing text}) of the CamVid subset."""
    members, listings = [], {}
    top = next(n.split("/")[0] for n in zf.namelist() if n.endswith("train.txt"))
    for split, n in counts.items():
        lines = [ln for ln in zf.read(f"{top}/{split}.txt").decode().split("\n") if ln.strip()][:n]
        listings[f"{top}/{split}.txt"] = "\n".join(lines) + "\n"
        for ln in lines:
            members += [f"{top}/{rel}" for rel in ln.split()]
    return members, listings


def tree_bytes(root: str = _ROOT) -> int:
    """Bytes of the files that travel without `carry`: tracked and untracked files
    that git does not ignore."""
    out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    total = 0
    for rel in filter(None, out.decode().split("\0")):
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            total += os.path.getsize(path)
    return total


def _zip_size(zf: zipfile.ZipFile, members) -> int:
    info = {i.filename: i for i in zf.infolist()}
    return sum(info[m].compress_size + 76 + 2 * len(m) for m in members) + 22


def write_zip(src: zipfile.ZipFile, dest: str, members, extra: dict[str, str] | None = None) -> None:
    """Copy `members` byte for byte (same compression) and `extra` texts into a new zip,
    written to a temporary name first so an interrupted copy leaves no half zip."""
    tmp = dest + ".tmp"
    extra = extra or {}
    with zipfile.ZipFile(tmp, "w") as out:
        for name in members:
            info = src.getinfo(name)
            out.writestr(info, src.read(name), compress_type=info.compress_type)
        for name, text in extra.items():
            out.writestr(name, text)
    os.replace(tmp, dest)


def stage(args) -> dict:
    """Write the two zips into `args.dest`; returns their sizes and the total that
    would travel.  Raises ValueError (nothing written) when the total is over the limit."""
    cifar = zipfile.ZipFile(os.path.join(args.src, CIFAR))
    camvid = zipfile.ZipFile(os.path.join(args.src, CAMVID))
    c_members = cifar_members(cifar, args.cifar_train, args.cifar_test)
    v_members, listings = camvid_members(
        camvid, {"train": args.camvid_train, "val": args.camvid_val, "test": args.camvid_test})
    sizes = {CIFAR: _zip_size(cifar, c_members),
             CAMVID: _zip_size(camvid, v_members) + sum(len(t) + 100 for t in listings.values())}
    if args.prev_run:
        sizes[PREV] = os.path.getsize(args.prev_run)
    tree = tree_bytes()
    total = tree + sum(sizes.values())
    report = {"dest": args.dest, "tree_mib": tree / MIB, "cifar10_mib": sizes[CIFAR] / MIB,
              "camvid_mib": sizes[CAMVID] / MIB, "total_mib": total / MIB,
              "cifar10_images": len(c_members), "camvid_pairs": len(v_members) // 2}
    if total > args.limit_mib * MIB:
        raise ValueError(
            f"working tree {tree / MIB:.1f} MiB + CIFAR-10 subset {sizes[CIFAR] / MIB:.1f} MiB + "
            f"CamVid subset {sizes[CAMVID] / MIB:.1f} MiB + earlier run "
            f"{sizes.get(PREV, 0) / MIB:.1f} MiB = {total / MIB:.1f} MiB exceeds "
            f"--limit-mib {args.limit_mib:g}; pass a smaller --cifar-train or --cifar-test.")
    os.makedirs(args.dest, exist_ok=True)
    write_zip(cifar, os.path.join(args.dest, CIFAR), c_members)
    write_zip(camvid, os.path.join(args.dest, CAMVID), v_members, listings)
    if args.prev_run:
        os.makedirs(os.path.join(args.dest, "prev"), exist_ok=True)
        shutil.copyfile(args.prev_run, os.path.join(args.dest, PREV))
        report["prev_run"] = os.path.join(args.dest, PREV)
    return report


def main(argv=None):
    args = parse_args(argv)
    try:
        r = stage(args)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {r['cifar10_images']} CIFAR-10 images ({r['cifar10_mib']:.1f} MiB) and "
          f"{r['camvid_pairs']} CamVid pairs ({r['camvid_mib']:.1f} MiB) to {r['dest']}; with the "
          f"working tree ({r['tree_mib']:.1f} MiB) {r['total_mib']:.1f} MiB travel. Device tool: "
          f'carry=["{os.path.relpath(r["dest"], _ROOT)}"].')
    return r


if __name__ == "__main__":
    main()
