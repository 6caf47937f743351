"""He, Xie & Lin, "An ODE-inspired network design" (NODE-EW), Sec. 4.3, Fig. 3: 2-D
normalizing flows with fixed vs evolving weights (``python -m experiments.flow``).

A config is a dict of flag defaults; explicit flags override it.
"""

from __future__ import annotations

from experiments.configs import register


@register("paper", "flow")
def paper():
    """NODE-EW Fig. 3: Adam, 1000 iterations of 100 fresh points, every density.
    python -m experiments.flow --config paper --name flow"""
    return dict(iters=1000, batch=100, hidden=32, test_size=4000, grid=100)


@register("smoke", "flow")
def smoke():
    """Smoke form of paper: 5 iterations, 8 hidden units, 200 test points (seconds).
    python -m experiments.flow --config smoke --name flow-smoke"""
    return dict(paper(), iters=5, hidden=8, test_size=200, grid=20)
