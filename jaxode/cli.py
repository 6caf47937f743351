"""The shared command-line layer of the experiments and benchmarks (issue 9, bad input).

`ArgumentParser` (errors that say what to do), the argument checks below, `renamed`
(an old flag name kept as a deprecated alias) and `stop` / `data_errors_exit` (bad
data or run folders end the program with one line, exit status 2).

The checks run right after ``argparse`` has parsed the command line, before any data
is read and before any JAX program is compiled.  A failed check goes through
``parser.error``: the usage line, then one sentence naming the flag, the bad value and
what to pass instead, and exit status 2 (argparse's own convention for bad
arguments).  One call per command line::

    check_args(parser, args, positive=("epochs", "lr"), at_least={"grid": 2},
               choices={"models": ("a", "b")}, parsers={"schedule": parse_schedule},
               existing=("data_root",), new_run_dirs=("out",))

Run folders: a re-run into a folder that already holds files would overwrite its
config, metrics and summary and (through `jaxode.train.fit`, which clears the
checkpoints of a fresh run) delete its checkpoints, so `check_new_run_dir` refuses a
non-empty folder; pick another name or move the old folder away.  For a *default*
run name, `new_numbered_run_dir` instead creates ``NAME-2``, ``NAME-3``, ... next to
the earlier run (``experiments.classify``).

Widths: `check_widths` applies `jaxode.nn.layers.group_norm_groups`, the rule of
`group_norm` itself (at most 32 channels or a multiple of 32), to width flags, so a
width the model could not normalise is refused before the model is built.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import warnings
from typing import Callable, Iterable, Mapping, NoReturn

__all__ = ["ArgumentParser", "check_args", "check_numbers", "check_list", "check_existing",
           "check_new_run_dir", "check_new_file", "check_widths", "data_errors_exit",
           "dataset_spec", "flag_name", "new_numbered_run_dir", "renamed", "split_list", "stop",
           "add_run_flags", "run_path"]


_ADVICE = (("invalid int value", "pass a whole number"),
           ("invalid float value", "pass a number, e.g. 0.1 or 1e-3"),
           ("expected one argument", "give the flag a value"),
           ("expected at least one argument", "give the flag one or more values"),
           ("unrecognized arguments", "see --help for the flags"),
           ("the following arguments are required", "add them (see --help)"))


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose own errors also say what to do (``invalid int
    value: 'two'; pass a whole number``); the experiments' command lines use it."""

    def error(self, message: str):
        for cause, advice in _ADVICE:
            if cause in message and advice not in message:
                message = f"{message}; {advice}."
                break
        super().error(message)


def renamed(old: str | Iterable[str], new: str) -> type[argparse.Action]:
    """An argparse action that stores the value like ``store`` and, when the flag was
    given by its `old` name, warns (`FutureWarning`) that `new` replaces it::

        p.add_argument("--data-root", "--data-path", dest="data_path",
                       action=renamed("--data-path", "--data-root"))

    `old` may also be several old names."""
    olds = {old} if isinstance(old, str) else set(old)

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in olds:
                warnings.warn(f"{option_string} is deprecated and will be removed; use {new} (same "
                              "meaning).", FutureWarning, stacklevel=2)
            setattr(namespace, self.dest, values)

    return Renamed


def flag_name(dest: str) -> str:
    """The command-line flag of an argparse destination: ``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


def _number_ok(value, minimum: float, strict: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value):
        return False
    return value > minimum if strict else value >= minimum


def check_numbers(parser, args, *, positive: Iterable[str] = (),
                  non_negative: Iterable[str] = (),
                  at_least: Mapping[str, float] | None = None) -> None:
    """Each named argument that is set (not None) must be a finite number above its
    bound; for ``nargs`` arguments every element is checked."""
    rules = ([(d, 0, True) for d in positive] + [(d, 0, False) for d in non_negative]
             + [(d, m, False) for d, m in (at_least or {}).items()])
    for dest, minimum, strict in rules:
        value = getattr(args, dest, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is not None and not _number_ok(v, minimum, strict):
                bound = f"> {minimum}" if strict else f">= {minimum}"
                shown = (f"{v!r} (in {' '.join(map(str, value))})"
                         if isinstance(value, (list, tuple)) else f"{v!r}")
                parser.error(f"argument {flag_name(dest)}: expected a finite number {bound}, "
                             f"got {shown}; pass a value {bound}.")


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]


def check_list(parser, dest: str, text: str | None, *, choices: Iterable | None = None,
               kind: Callable = str, minimum: float | None = None) -> list | None:
    """Parse a comma-separated argument: non-empty, each item converted by `kind`, in
    `choices` if given, >= `minimum` if given.  Returns the items (None if unset)."""
    if text is None:
        return None
    flag = flag_name(dest)
    items = split_list(text)
    if not items:
        parser.error(f"argument {flag}: {text!r} names nothing; give a comma-separated list.")
    out = []
    for item in items:
        try:
            value = kind(item)
        except ValueError:
            parser.error(f"argument {flag}: {item!r} in {text!r} is not a valid "
                         f"{getattr(kind, '__name__', 'value')}; give a comma-separated list "
                         f"of them, e.g. {flag} 1,2.")
        if choices is not None and value not in tuple(choices):
            parser.error(f"argument {flag}: unknown name {item!r} in {text!r}; choose from "
                         f"{', '.join(map(str, choices))}.")
        if minimum is not None and not _number_ok(value, minimum, False):
            parser.error(f"argument {flag}: {item!r} in {text!r} is below {minimum}; every "
                         f"entry must be >= {minimum}.")
        out.append(value)
    return out


def check_existing(parser, dest: str, path: str | None, what: str = "file or folder") -> None:
    """An explicitly given input path must exist and be readable."""
    if path is None:
        return
    flag = flag_name(dest)
    if not os.path.exists(path):
        parser.error(f"argument {flag}: {path!r} does not exist; pass an existing {what} "
                     "(or leave the flag out to use $JAXODE_DATA).")
    mode = os.R_OK | (os.X_OK if os.path.isdir(path) else 0)
    if not os.access(path, mode):
        parser.error(f"argument {flag}: {path!r} is not readable; fix its permissions or "
                     f"pass another {what}.")


def _check_parent_writable(parser, flag: str, path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        parser.error(f"argument {flag}: cannot create {path!r} because {parent!r} is a "
                     "file, not a folder; pass another path.")
    if not os.access(parent, os.W_OK | os.X_OK) or not _can_create_in(parent):
        parser.error(f"argument {flag}: cannot write under {parent!r} (permission denied "
                     "or not a writable file system); pass a path in a writable folder.")


def _can_create_in(folder: str) -> bool:
    """Whether a file can really be created in `folder` (``os.access`` says yes for root
    everywhere, /proc and read-only mounts included): create and remove a probe file."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".jaxode-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.remove(probe)
    return True


def check_new_run_dir(parser, flag: str, path: str, *, also: str = "") -> None:
    """`path` must be a missing or empty folder that can be created: an earlier run's
    results there are never overwritten or deleted.  `also` is appended to the advice
    of the refusal (e.g. ``", or pass --resume to continue it"``)."""
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"argument {flag}: run folder {path!r} is an existing file; pass "
                     "another folder.")
    if os.path.isdir(path):
        held = sorted(os.listdir(path))
        if held:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            parser.error(f"argument {flag}: run folder {path!r} already holds an earlier "
                         f"run ({shown}), which a new run would overwrite or delete; pass "
                         f"another {flag} or move that folder away{also}.")
    _check_parent_writable(parser, flag, path)


def new_numbered_run_dir(path: str, limit: int = 10_000) -> str:
    """Claim and return the first of ``path``, ``path-2``, ``path-3``, ... that is missing
    or empty (`jaxode.train.rundir.claim_run_dir`: an exclusive create, so two runs
    started together never share a folder).  For a default run name: a second run of
    the same command goes next to the first one and never touches its files."""
    from jaxode.train.rundir import claim_run_dir

    for n in range(1, limit + 1):
        candidate = path if n == 1 else f"{path}-{n}"
        if os.path.exists(candidate) and not os.path.isdir(candidate):
            continue
        if claim_run_dir(candidate):
            return candidate
    raise FileExistsError(f"{path!r} and {path}-2 ... {path}-{limit} all hold runs; pass a "
                          "run name of your own.")


def check_widths(parser, dest: str, widths, *, max_groups: int = 32,
                 flag: str | None = None) -> None:
    """Every width (an int or a list of ints; None = unset) must suit `group_norm`: the
    rule is `jaxode.nn.layers.group_norm_groups` itself (at most `max_groups`, or a
    multiple of it), checked before the model is built."""
    if widths is None:
        return
    from jaxode.nn.layers import group_norm_groups

    values = list(widths) if isinstance(widths, (list, tuple)) else [widths]
    shown = " (in " + ",".join(map(str, values)) + ")" if len(values) > 1 else ""
    for w in values:
        try:
            group_norm_groups(w, max_groups)
        except ValueError as e:
            reason = str(e).removeprefix("group_norm: ")
            parser.error(f"argument {flag or flag_name(dest)}: width {w!r}{shown} does not "
                         f"suit GroupNorm: {reason}")


def check_new_file(parser, flag: str, path: str | None) -> None:
    """An output file must not exist yet (an earlier result is never overwritten)."""
    if path is None:
        return
    if os.path.exists(path):
        parser.error(f"argument {flag}: {path!r} already exists and would be overwritten; "
                     f"pass another {flag} or move the old file away.")
    _check_parent_writable(parser, flag, path)


def dataset_spec(text: str) -> str:
    """Validate a dataset spec of `jaxode.data.load_dataset` without loading it
    (``digits``, ``mnist``, ``cifar10``, ``tiny-imagenet``, ``folder:PATH``,
    ``tfds:NAME``); a ValueError names the spec and the choices."""
    from jaxode.data.load import SPECS

    names = [s for s in SPECS if ":" not in s]
    prefixes = [s.split(":")[0] + ":" for s in SPECS if ":" in s]
    if text in names or any(text.startswith(p) and len(text) > len(p) for p in prefixes):
        return text
    raise ValueError(f"unknown dataset {text!r}; use one of {', '.join(SPECS)}.")


def stop(message: str) -> NoReturn:
    """End the program over input it cannot use (data, a run folder, a checkpoint): one
    line ``error: MESSAGE`` on stderr, no traceback, exit status 2 (as `parser.error`).
    The message says what was wrong and what to do."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    raise SystemExit(2)


@contextlib.contextmanager
def data_errors_exit():
    """Inside this block, a dataset that cannot be found or read (the loaders'
    FileNotFoundError / OSError / ValueError, which name the path and how to fix it)
    ends the program through `stop`: that message on one line, exit status 2."""
    try:
        yield
    except (OSError, ValueError) as e:
        stop(str(e))


def check_args(parser, args, *, positive: Iterable[str] = (), non_negative: Iterable[str] = (),
               at_least: Mapping[str, float] | None = None,
               choices: Mapping[str, Iterable] | None = None,
               parsers: Mapping[str, Callable] | None = None,
               existing: Iterable[str] = (), new_run_dirs: Iterable[str] = ()) -> None:
    """All checks of one command line, by argparse destination name.

    - `positive` / `non_negative` / `at_least`: numeric bounds (`check_numbers`).
    - `choices`: comma-separated name lists and their allowed names.
    - `parsers`: a function that parses (and so validates) a string argument; its
      ValueError becomes the error message, e.g. ``{"schedule": parse_schedule}``.
    - `existing`: input paths that must exist and be readable.
    - `new_run_dirs`: output folders that must be missing or empty.
    """
    check_numbers(parser, args, positive=positive, non_negative=non_negative, at_least=at_least)
    for dest, allowed in (choices or {}).items():
        check_list(parser, dest, getattr(args, dest), choices=tuple(allowed))
    for dest, parse in (parsers or {}).items():
        value = getattr(args, dest)
        if value is not None:
            try:
                parse(value)
            except ValueError as e:
                parser.error(f"argument {flag_name(dest)}: {e}")
    for dest in existing:
        check_existing(parser, dest, getattr(args, dest))
    for dest in new_run_dirs:
        check_new_run_dir(parser, flag_name(dest), getattr(args, dest))


# ------------------------------------------------------------ flag texts and run folders


def parse_milestones(text: str) -> tuple[int, ...]:
    """``"60,100,140"`` -> ``(60, 100, 140)``: positive epochs, in increasing order."""
    try:
        out = tuple(int(m) for m in split_list(text))
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of epochs; write e.g. "
                         "60,100,140.") from None
    if any(m < 1 for m in out) or list(out) != sorted(set(out)):
        raise ValueError(f"{text!r}: the milestones must be positive epochs in increasing "
                         "order, e.g. 60,100,140.")
    return out


# The solves run in float32 (machine epsilon 1.2e-7): a tighter tolerance cannot be
# met, and the solver spends all its max_steps trying (e.g. --tol-sweep 1e-12).
MIN_TOL = 1e-6


def parse_tolerances(text: str) -> tuple[float, ...]:
    """``"1e-1,1e-2"`` -> ``(0.1, 0.01)``; ``""`` -> no sweep.  Each must be finite and
    at least `MIN_TOL`."""
    try:
        out = tuple(float(t) for t in split_list(text))
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of tolerances; write "
                         "e.g. 1e-1,1e-2,1e-3 (or '' for no sweep).") from None
    if not all(MIN_TOL <= t < float("inf") for t in out):
        raise ValueError(f"{text!r}: every tolerance must be a finite number >= {MIN_TOL:g} "
                         "(float32 solves cannot meet a tighter one), e.g. 1e-1,1e-2,1e-3.")
    return out


def parse_regularizers(text: str) -> tuple[tuple[str, float], ...]:
    """``"kinetic=0.01,jacobian=0.01"`` -> ``(("kinetic", 0.01), ("jacobian", 0.01))``
    ('' = none); a ValueError names the bad item (`jaxode.train.regularize`)."""
    from jaxode.train.regularize import check_weights

    out = []
    for item in split_list(text):
        name, eq, weight = item.partition("=")
        try:
            out.append((name.strip(), float(weight)))
        except ValueError:
            raise ValueError(f"expected NAME=WEIGHT, e.g. kinetic=0.01, got {item!r}") from None
        if not eq:
            raise ValueError(f"expected NAME=WEIGHT, e.g. kinetic=0.01, got {item!r}")
    check_weights(dict(out))
    return tuple(out)


def settings_differences(saved: Mapping, now: Mapping, *, free: Iterable[str] = (),
                         may_grow: Iterable[str] = ()) -> list[str]:
    """``key: saved -> now`` for every setting that differs between a run's saved
    settings and the command line's, except the `free` keys (they may change on a
    resume) and the `may_grow` keys when they only grew (e.g. more epochs)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if old == new or key in tuple(free):
            continue
        if (key in tuple(may_grow) and isinstance(old, int) and isinstance(new, int)
                and new >= old):
            continue
        out.append(f"{key}: {old!r} -> {new!r}")
    return out


def check_resume(parser, path: str, section: str, now: Mapping, *, free: Iterable[str] = (),
                 may_grow: Iterable[str] = (), may_change: str = "") -> None:
    """A ``--resume`` of the run in `path` must find it (``config.json``) and use its
    settings: ``config.json[section]`` is compared with `now` (`settings_differences`)
    and a resume with other settings is refused, listing them (exit status 2).
    `may_change` names the flags that may differ, for the advice."""
    import json

    from jaxode.train.rundir import _jsonable

    try:
        with open(os.path.join(path, "config.json")) as f:
            saved = json.load(f)[section]
    except FileNotFoundError:
        parser.error(f"argument --resume: {path!r} holds no run (no config.json); pass the "
                     "--name of an earlier run, or drop --resume.")
    except (OSError, ValueError, KeyError, TypeError) as e:
        parser.error(f"argument --resume: {path}/config.json cannot be read ({e}); restore "
                     "it from a backup, or start a new run without --resume.")
    diff = settings_differences(saved, _jsonable(dict(now)), free=free, may_grow=may_grow)
    if diff:
        parser.error(f"argument --resume: these settings differ from the run in {path!r}: "
                     f"{'; '.join(diff)}. Pass the original flags (only {may_change or 'none'} "
                     "may change), or start a new run with --name.")


def claim_run_folder(parser, path: str, *, explicit: bool, flag: str = "--name",
                     log=print) -> str:
    """Claim the run folder of a fresh run before any data is read and return it.

    An `explicit` folder (the user named it) must be missing or empty, else exit
    status 2 advising another `flag` or ``--resume``.  A default folder that holds a
    run is kept and the run goes to ``PATH-2`` (``PATH-3``, ...), said in one line.
    The claim is an exclusive create (`jaxode.train.rundir.claim_run_dir`), so two
    runs started together never share a folder."""
    from jaxode.train.rundir import claim_run_dir

    if explicit:
        check_new_run_dir(parser, flag, path, also=", or pass --resume to continue it")
        if not claim_run_dir(path):
            parser.error(f"argument {flag}: another run claimed {path!r} a moment ago; pass "
                         f"another {flag}.")
        return path
    try:
        created = new_numbered_run_dir(path)
    except OSError as e:
        parser.error(f"argument --runs-dir: cannot create a run folder {path!r} "
                     f"({e.strerror or e}); pass a --runs-dir in a writable folder.")
    if created != path:
        log(f"run folder {path} already holds an earlier run, which is kept as it is; this "
            f"run goes to {created} (pass {flag} NAME to choose the folder, or --resume to "
            "continue the earlier run).")
    return created


def keep_previous_results(out: str, files: Iterable[str], *, prefix: str | None = None,
                          log=print) -> str | None:
    """Before a re-run writes into `out` again, move the earlier results there (the
    `files` that exist and every entry whose name starts with `prefix`) to
    ``out/previous/<time>/``, so nothing written before is lost.  Returns that folder
    (None when there was nothing to move)."""
    import time

    old = [f for f in files if os.path.exists(os.path.join(out, f))]
    if prefix:
        old += sorted(f for f in os.listdir(out) if f.startswith(prefix))
    if not old:
        return None
    dest = os.path.join(out, "previous", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(dest, exist_ok=True)
    for f in old:
        os.replace(os.path.join(out, f), os.path.join(dest, f))
    log(f"earlier results of {out} moved to {dest}")
    return dest


def add_run_flags(parser, *, configs: Iterable[str], default_config: str | None,
                  describe: Callable[[str], str] | None = None, runs_dir: str = "runs",
                  old_names: Iterable[str] = ()) -> None:
    """Add the flags every training experiment shares, with the same names and meaning:

    ``--config NAME`` (one of `configs`), ``--list`` (print the named configs and
    exit), ``--data-root DIR`` (default ``$JAXODE_DATA``), ``--runs-dir DIR`` and
    ``--name NAME`` (the run folder is RUNS_DIR/NAME, see `run_path`), ``--resume``
    (continue that run from its newest checkpoint) and ``--no-progress``.

    `old_names` are earlier spellings of ``--name`` (``--run-name``, ``--run``, ``--out``)
    kept as deprecated aliases: they still work and warn (`renamed`)."""
    configs = list(configs)
    a = parser.add_argument
    a("--config", default=default_config, metavar="NAME",
      help="named configuration (see --list); other flags override its fields"
           + (f" (default: {default_config})" if default_config else ""))
    a("--list", action="store_true",
      help="list the named configurations and exit" + (
          ": " + "; ".join(f"{n} ({describe(n)})" if describe else n for n in configs)
          if configs else "").replace("%", "%%"))  # argparse formats help with %
    a("--data-root", dest="data_root", default=None,
      help="where the dataset files are (default: $JAXODE_DATA)")
    a("--runs-dir", default=runs_dir, help=f"parent folder of run folders (default: {runs_dir})")
    old_names = tuple(old_names)
    kw = {"action": renamed(old_names, "--name")} if old_names else {}
    a("--name", *old_names, dest="name", default=None, **kw,
      help="run folder name under --runs-dir (default: the config's name)")
    a("--resume", action="store_true",
      help="continue the run in RUNS_DIR/NAME from its newest intact checkpoint")
    a("--no-progress", action="store_true", help="no progress bars")


def run_path(args, default_name: str) -> str:
    """The run folder of parsed `add_run_flags` arguments: RUNS_DIR/NAME, with NAME the
    ``--name`` given or `default_name` (usually the config's name).  A NAME holding a
    path separator (``runs/flow``, as the old ``--out`` took) is the folder itself."""
    name = args.name or default_name
    return name if os.sep in name or "/" in name else os.path.join(args.runs_dir, name)
