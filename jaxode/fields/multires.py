"""The multi-resolution vector field of SegNode (Khoshsirat & Kambhamettu, Sec. 3.2).

The state is the tuple of four feature maps z = (z_1, z_2, z_3, z_4) at 1/4, 1/8,
1/16 and 1/32 of the input resolution, and

    dz/dt = f(t, z) = M_n(t, ... M_1(t, z)) - z,

where M_k are HRNetV2 modules (`jaxode.nn.hrnet.HRModule`).  With one module (the
default) f = R(t, z), the residual part of the module that the baseline network uses
as a residual unit, h_{k+1} = h_k + R_k(h_k): the ODE is the continuous-depth limit of
the baseline with shared weights (Eq. 1-3 of the paper).  With n > 1 modules the field
is the residual of the stack (Sec. 4.1 mentions two modules in the main body).

Time enters as a constant extra channel of every 3x3 convolution of the branches'
residual blocks; normalisation is GroupNorm (independent of the batch); see
`jaxode.nn.hrnet` for both choices.
"""

from __future__ import annotations

from typing import Sequence

import equinox as eqx
import jax

from jaxode.nn.hrnet import HRModule, PAPER_WIDTHS


class MultiResField(eqx.Module):
    """f(t, z) = M_n(t, ..., M_1(t, z)) - z on a tuple of four feature maps.

    **Arguments:**

    - `widths`: channels per branch, highest resolution first (paper: 48, 96, 192, 384).
    - `blocks`: basic residual blocks per branch in each module (HRNetV2: 4).
    - `modules`: HRNet modules composed in the field (default 1).
    - `time`: if True (default) t enters every 3x3 branch convolution as an extra
      constant channel; if False the field is autonomous.
    - `key`.

    Acts on one example (a tuple of (C_k, H_k, W_k) arrays); `ODEBlock.batched` vmaps.
    """

    modules: tuple[HRModule, ...]

    def __init__(self, widths: Sequence[int] = PAPER_WIDTHS, blocks: int = 4,
                 modules: int = 1, *, time: bool = True, max_groups: int = 32, key):
        if modules < 1:
            raise ValueError(f"MultiResField: modules must be >= 1, got {modules}.")
        keys = jax.random.split(key, modules)
        self.modules = tuple(
            HRModule(widths, blocks, with_time=time, max_groups=max_groups, key=k)
            for k in keys
        )

    def check_state(self, z) -> None:
        """Trace-time check of the state: the tuple of per-branch (C_k, H_k, W_k) maps
        that the first module expects (channels per `widths`), each branch's size the
        previous one's halved and rounded up (what the stride-2 fusions produce)."""
        self.modules[0].check_state(z)
        shapes = [tuple(x.shape) for x in z]
        for k in range(1, len(shapes)):
            want = tuple(-(-n // 2) for n in shapes[k - 1][1:])
            if shapes[k][1:] != want:
                raise ValueError(
                    f"MultiResField: branch {k} has spatial size {shapes[k][1:]}, expected "
                    f"{want} (branch {k - 1}'s {shapes[k - 1][1:]} halved, rounded up); got "
                    f"branch shapes {shapes}. Build the state with the SegNode stem and "
                    "transition, or fix the sizes."
                )

    def __call__(self, t, z):
        self.check_state(z)
        h = tuple(z)
        for m in self.modules:
            h = m(h, t if m.with_time else None)
        return tuple(a - b for a, b in zip(h, z))
