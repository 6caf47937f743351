"""He, Xie & Lin, "An ODE-inspired network design" (NODE-EW): the curve fit (Sec. 4.1,
Fig. 1; ``python -m experiments.curve``) and MNIST (Sec. 4.2, Table 1;
``python -m experiments.node_ew_mnist``).  The flows of Sec. 4.3 are in
`experiments.configs.flows`.

The MNIST network is also a classifier of `experiments.classify` (``--config
node-ew-mnist``, ``smoke-node-ew-digits``): Chen et al.'s recipe, as for the ODE-Net
it is compared with, with the paper's two phases (``--schedule euler:E,adjoint:A``).
The curve and node_ew_mnist configs are dicts of flag defaults; explicit flags
override them.
"""

from __future__ import annotations

from experiments.configs import register
from experiments.configs.chen import PAPER as CHEN_RECIPE
from experiments.configs.classify import ClassifyConfig

# -------------------------------------------- Sec. 4.2, Table 1 (experiments.classify)


@register("node-ew-mnist")
def node_ew_mnist():
    """NODE-EW Table 1: MNIST, 10 Euler steps + backprop, then dopri5 + adjoint (paper 0.35%).
    python -m experiments.classify --config node-ew-mnist --runs-dir results --name mnist-node-ew

    Chen et al.'s recipe (`experiments.configs.chen`: SGD 0.1, momentum 0.9, batch
    128, crop padding 4, x0.1 at epochs 60/100/140 of 160), the paper's 80 epochs
    through 10 Euler steps with backprop, then 80 of dopri5 + backsolve adjoint.
    theta_1 (the weight dynamics' parameters) learns at 0.01x the rate: with one shared
    rate a 3,000-image run stayed at chance (docs/results/node_ew.md)."""
    return ClassifyConfig(model="node-ew", name="node-ew-mnist",
                          description="NODE-EW Table 1: MNIST, Euler then adjoint",
                          **CHEN_RECIPE, phases="euler:80,adjoint:80", euler_steps=10,
                          g_lr_scale=0.01)


@register("smoke-node-ew-digits")
def smoke_node_ew_digits():
    """Smoke form of node-ew-mnist: 256 digits upsampled to 24x24, 1 Euler + 1 adjoint epoch.
    python -m experiments.classify --config smoke-node-ew-digits

    The 8x8 digits are repeated 3x3 per pixel inside the model (``upsample``), so
    Chen's down-sampling leaves 5x5 maps (MNIST: 6x6); from 8x8 it leaves 1x1 maps, on
    which the adjoint solve runs out of steps."""
    return node_ew_mnist().replace(
        name="smoke-node-ew-digits", description="NODE-EW on 256 digits (smoke run)",
        dataset="digits", model_kwargs=(("upsample", 3),), train_limit=256, test_limit=128,
        batch_size=64, eval_batch_size=128, epochs=2, phases="euler:1,adjoint:1",
        lr=0.05, lr_schedule="constant", milestones=(), crop_padding=0,
        tol_sweep=(1e-2, 1e-3))


# ------------------------------ curve, flow and node_ew_mnist: configs of flag defaults


def parse_run_flags(parser, experiment: str, argv=None, default: str = "paper"):
    """`experiments.configs.parse` with ``--out``, the old run-folder flag, as a
    deprecated alias of ``--name``.  ``args.run`` is the run folder: RUNS_DIR/NAME, NAME
    by default the experiment's name.  These runs start afresh: ``--resume`` is
    refused."""
    from experiments.configs import parse
    from jaxode import cli

    args = parse(parser, experiment, argv, default, old_names=("--out",))
    if args.resume:
        parser.error(f"argument --resume: {experiment} runs are short and start afresh; "
                     "drop --resume and pass a new --name.")
    args.run = cli.run_path(args, experiment)
    cli.check_new_run_dir(parser, "--name", args.run)
    return args


@register("paper", "curve")
def curve_paper():
    """NODE-EW Fig. 1: 1000-unit field, 1500 Euler + 100 adjoint iterations vs pure adjoint.
    python -m experiments.curve --config paper --name curve"""
    return dict(hidden=1000, euler_iters=1500, finetune_iters=100, pure_iters=3000,
                pure_seconds=600.0)


@register("smoke", "curve")
def curve_smoke():
    """Smoke form of the curve fit: 32 units, 20 + 3 hybrid and 5 pure iterations.
    python -m experiments.curve --config smoke --name curve-smoke"""
    return dict(hidden=32, euler_iters=20, finetune_iters=3, pure_iters=5, pure_seconds=30.0)


@register("paper", "node_ew_mnist")
def mnist_paper():
    """NODE-EW Table 1: all of MNIST, 80 Euler + 80 adjoint epochs (a GPU run).
    python -m experiments.node_ew_mnist --config paper --data-root DATA"""
    return dict(dataset="mnist", train_limit=0, test_limit=0, schedule="euler:80,adjoint:80")


@register("cpu", "node_ew_mnist")
def mnist_cpu():
    """NODE-EW Table 1 on a CPU: 1,024 MNIST images, 2 Euler + 2 adjoint epochs.
    python -m experiments.node_ew_mnist --config cpu --data-root DATA"""
    return dict(dataset="mnist", train_limit=1024, test_limit=1000,
                schedule="euler:2,adjoint:2")


@register("smoke", "node_ew_mnist")
def mnist_smoke():
    """Smoke form: 256 digits upsampled to 24x24, 1 Euler + 1 adjoint epoch (minutes).
    python -m experiments.node_ew_mnist --config smoke"""
    return dict(smoke=True)
