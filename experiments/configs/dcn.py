"""Tomen, Pintea & van Gemert, "Deep Continuous Networks" (ICML 2021): settings of the
training subcommands of ``python -m experiments.dcn``, one group each -- ``dcn``
(``classify``), ``dcn-small-data``, ``dcn-reconstruct`` -- with ``paper`` and ``smoke``.
A config is a dict the command's flags override; lr is the one at batch 128 (scaled by
batch / 128); ``support`` is the SRF kernel support (docs/dcn_kernel_size.md).
"""

from __future__ import annotations

from experiments.configs import register


@register("paper", "dcn")
def paper():
    """DCN Tables 1, 5 (CIFAR-10; SGD 0.1 x batch/128, lr x0.1 at epochs 40, 70; 100 epochs).
    python -m experiments.dcn classify --model dcn_ode --config paper --data-root DATA"""
    return dict(epochs=100, batch_size=128, lr=0.1, milestones=(40, 70), train_limit=None,
                test_limit=None, widths=(32, 64, 128), tol=1e-3, support="separable")


@register("smoke", "dcn")
def smoke():
    """Smoke form of Tables 1, 5: widths 8,16,32, 64 train / 64 test images, 1 epoch, tol 1e-2.
    python -m experiments.dcn classify --model dcn_ode --config smoke --data-root DATA"""
    return dict(paper(), epochs=1, batch_size=16, milestones=(), train_limit=64,
                test_limit=64, widths=(8, 16, 32), tol=1e-2)


@register("paper", "dcn-small-data")
def small_data_paper():
    """DCN Table 2, first column: 2 images per class, seeds 0, 1, 2, Table 1's training.
    python -m experiments.dcn small-data --model dcn_ode --config paper --data-root DATA"""
    return dict(paper(), per_class=2, seeds="0,1,2", epoch_factor=1)


@register("smoke", "dcn-small-data")
def small_data_smoke():
    """Smoke form of Table 2: 20 images per class, seeds 0, 1, 2, the classify smoke.
    python -m experiments.dcn small-data --model dcn_ode --config smoke --data-root DATA"""
    return dict(smoke(), per_class=20, seeds="0,1,2", epoch_factor=1)


@register("paper", "dcn-reconstruct")
def reconstruct_paper():
    """DCN Table 3 (A.4 encoder-decoder, MSE; 50 epochs, lr x0.1 at 25, 40 as the reference).
    python -m experiments.dcn reconstruct --checkpoint RUN --config paper --data-root DATA"""
    return dict(paper(), epochs=50, milestones=(25, 40))


@register("smoke", "dcn-reconstruct")
def reconstruct_smoke():
    """Smoke form of Table 3: the classify smoke settings (1 epoch, 64 images).
    python -m experiments.dcn reconstruct --model dcn_ode --config smoke --data-root DATA"""
    return smoke()
