"""Tomen, Pintea & van Gemert, "Deep Continuous Networks" (ICML 2021): settings of
``python -m experiments.dcn`` (every subcommand that trains takes ``--config``).

A config is a dict of settings; the learning rate is the one at batch 128 and is
scaled by batch / 128 as in the reference code.  ``support`` is the SRF kernel-support
strategy (docs/dcn_kernel_size.md).
"""

from __future__ import annotations

from experiments.configs import register

SOLVE_PAPER = dict(tol=1e-3, support="separable")


@register("paper", "dcn")
def paper():
    """DCN Tables 1, 2, 5 (CIFAR-10; SGD 0.1 x batch/128, lr x0.1 at epochs 40, 70; 100 epochs).
    python -m experiments.dcn classify --model dcn_ode --config paper --data-root DATA"""
    return dict(epochs=100, batch_size=128, lr=0.1, milestones=(40, 70), train_limit=None,
                test_limit=None, widths=(32, 64, 128), **SOLVE_PAPER)


@register("smoke", "dcn")
def smoke():
    """Smoke form of paper: widths 8,16,32, 64 train / 64 test images, 1 epoch, tol 1e-2.
    python -m experiments.dcn classify --model dcn_ode --config smoke --data-root DATA"""
    return dict(paper(), epochs=1, batch_size=16, milestones=(), train_limit=64,
                test_limit=64, widths=(8, 16, 32), tol=1e-2)
