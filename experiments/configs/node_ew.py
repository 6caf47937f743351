"""He, Xie & Lin, "An ODE-inspired network design" (NODE-EW): the curve fit (Sec. 4.1,
Fig. 1; ``python -m experiments.curve``) and MNIST (Sec. 4.2, Table 1;
``python -m experiments.node_ew_mnist``).  The flows of Sec. 4.3 are in
`experiments.configs.flows`.

A config is a dict of flag defaults; explicit flags override it.
"""

from __future__ import annotations

from experiments.configs import register


@register("paper", "curve")
def curve_paper():
    """NODE-EW Fig. 1: 1000-unit field, 1500 Euler + 100 adjoint iterations vs pure adjoint.
    python -m experiments.curve --config paper --out runs/curve"""
    return dict(hidden=1000, euler_iters=1500, finetune_iters=100, pure_iters=3000,
                pure_seconds=600.0)


@register("smoke", "curve")
def curve_smoke():
    """Smoke form of the curve fit: 32 units, 20 + 3 hybrid and 5 pure iterations.
    python -m experiments.curve --config smoke --out runs/curve-smoke"""
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
