"""The ``contrast`` (Fig. 5) and ``completion`` (Fig. 3c, Fig. 4) subcommands of
``python -m experiments.dcn``: probes of trained DCN runs (``--checkpoint``) on the
CIFAR-10 test split, written by `jaxode.models.dcn_analysis` into a new ``--out`` folder.
"""

from __future__ import annotations

import numpy as np

from jaxode import cli


def _load_probe_inputs(args):
    """The run folders of --checkpoint (`dcn_analysis.load_probe_runs`) and the
    (limited) CIFAR-10 test split."""
    from jaxode.data.load import load_dataset
    from jaxode.models.dcn_analysis import load_probe_runs

    with cli.data_errors_exit():
        test = load_dataset("cifar10", "test", root=args.data_root).sample(args.test_limit,
                                                                           seed=args.seed)
        models = load_probe_runs(args.checkpoint, tol=args.tol, max_steps=args.max_steps)
    if len(test) == 0:
        cli.stop("the test set is empty; check --data-root and --test-limit.")
    return models, test


def check_args(parser, args) -> None:
    """Refuse bad arguments of ``contrast`` / ``completion`` before any data or JAX."""
    cli.check_args(parser, args, positive=("batch_size", "test_limit", "tol", "times",
                                           "d_images", "max_steps"),
                   non_negative=("seed", "d_mask_size"), existing=("data_root",),
                   new_run_dirs=("out",))
    for run_dir in args.checkpoint:
        cli.check_existing(parser, "checkpoint", run_dir, "run folder")
    if args.cmd == "contrast":
        cli.check_list(parser, "contrasts", args.contrasts, kind=float, minimum=0)
        if any(float(c) == 0 for c in cli.split_list(args.contrasts)):
            parser.error(f"argument --contrasts: {args.contrasts!r} holds a zero; an "
                         "input of contrast 0 is blank and T = 0 integrates nothing; "
                         "give values > 0.")
        from jaxode.models.dcn_probes import CONTRAST_MODES

        cli.check_list(parser, "modes", args.modes, choices=CONTRAST_MODES)
    else:
        sizes = cli.check_list(parser, "mask_sizes", args.mask_sizes, kind=int, minimum=0)
        if max(sizes + [args.d_mask_size]) > 32:
            parser.error("argument --mask-sizes/--d-mask-size: a mask larger than the "
                         "32x32 image; give sizes <= 32.")


def add_commands(sub) -> None:
    """The ``contrast`` and ``completion`` subcommands of ``python -m experiments.dcn``."""

    def probe(name, what, help, description):
        q = sub.add_parser(name, help=help, description=description)
        q.add_argument("--checkpoint", action="append", required=True,
                       help="run folder of a 'classify' / 'small-data' run (repeat the flag "
                            "to compare models in one figure)")
        q.add_argument("--data-root", default=None, help="dataset folder (default $JAXODE_DATA)")
        q.add_argument("--out", required=True, help=f"new folder for {what}")
        q.add_argument("--test-limit", type=int, default=None,
                       help="random subset of the test split (default: all 10,000)")
        q.add_argument("--seed", type=int, default=0, help="seed of the test subset")
        q.add_argument("--batch-size", type=int, default=100)
        q.add_argument("--tol", type=float, default=None,
                       help="rtol = atol of every ODE block (default: the run's)")
        q.add_argument("--max-steps", type=int, default=256,
                       help="step limit of one solve; a batch that hits it is counted in "
                            "max_steps_batches, not stopped (small c can make solves stiff)")
        return q

    q = probe("contrast", "contrast.json and contrast.png",
              "accuracy and NFE under input contrast c (Fig. 5)",
              "Accuracy and forward NFE (per ODE block and total, per batch) of trained "
              "models for inputs c * H (Sec. 3.3): 'naive' (input only), 'block1' (ODE block "
              "1 integrated over [0, c T]) and 'all' (every block over [0, c T_i], inputs of "
              "blocks 2.. times c). One compiled program per model serves all c and modes.")
    q.add_argument("--contrasts", default=",".join(f"{c:.4g}" for c in np.logspace(-3, 0.7, 30)),
                   help="comma list of c > 0 (default: the paper's 30 log-spaced values "
                        "1e-3 ... 10^0.7)")
    q.add_argument("--modes", default="naive,block1,all", help="comma list of naive, block1, all")
    q.set_defaults(fn=lambda a: cmd_contrast(a, *_load_probe_inputs(a)))
    q = probe("completion", "completion.json and the figures",
              "pattern completion: masked accuracy, D(t) (Fig. 3c, 4)",
              "Accuracy with an n x n zero square at the image centre (Fig. 3c), and D(t) = "
              "sum|h(t) - h_masked(t)| / sum|h(t)| inside ODE block 1 (eq. 4), mean and std "
              "over images, with example feature maps (Fig. 4).")
    q.add_argument("--mask-sizes", default="0,4,6,8,10,12,14",
                   help="comma list of n (0 = intact)")
    q.add_argument("--d-mask-size", type=int, default=6,
                   help="mask size for D(t) (A.5 shows 6x6; the reference code uses 14)")
    q.add_argument("--d-images", type=int, default=1000,
                   help="test images averaged in D(t) (paper: 1000)")
    q.add_argument("--times", type=int, default=21, help="times t in [0, T] for D(t)")
    q.set_defaults(fn=lambda a: cmd_completion(a, *_load_probe_inputs(a)))


def cmd_contrast(args, models, test):
    """Fig. 5 for every model (`jaxode.models.dcn_analysis.contrast_report`)."""
    from tqdm.auto import tqdm

    from jaxode.models.dcn_analysis import contrast_report

    rows = contrast_report(models, test, args.out, contrasts=cli.split_list(args.contrasts),
                           modes=cli.split_list(args.modes), batch_size=args.batch_size,
                           tol=args.tol, progress=tqdm)
    for label in models:
        r = next(r for r in rows if r["model"] == label)
        print(f"{label}: {sum(r['model'] == label for r in rows)} (mode, c) settings, "
              f"{r['compiles']} compile(s)")
    for r in rows:
        print(f"{r['model']:>14} {r['mode']:>6} c={r['c']:<8.4g} acc {100 * r['acc']:5.1f}%  "
              f"NFE block1 {r['nfe_block1']:6.1f}  total {r['nfe_total']:6.1f}")


def cmd_completion(args, models, test):
    """Fig. 3c and Fig. 4 for every model (`jaxode.models.dcn_analysis.completion_report`)."""
    from tqdm.auto import tqdm

    from jaxode.models.dcn_analysis import completion_report

    result = completion_report(
        models, test, args.out, mask_sizes=[int(n) for n in cli.split_list(args.mask_sizes)],
        d_mask_size=args.d_mask_size, d_images=args.d_images, times=args.times,
        batch_size=args.batch_size, progress=tqdm)
    for label, r in result["models"].items():
        acc = ", ".join(f"{n}: {100 * a:.1f}%" for n, a in r["accuracy_by_mask_size"].items())
        print(f"{label}: accuracy by mask size {acc}; D(t0) {r['D_mean'][0]:.3f} -> "
              f"D(T) {r['D_mean'][-1]:.3f}")
