r"""The LARS conventions of the paper, optax and timm, as data.

With :math:`c` the trust coefficient, :math:`\lambda` the weight decay,
:math:`\eta` the learning rate, :math:`\mu` the momentum, :math:`d` the
dampening and :math:`u = g + \lambda w`:

=============  ==========================================  ==========================================
               trust ratio :math:`r` (1 where a norm is 0)  momentum buffer and step
=============  ==========================================  ==========================================
``"paper"``    :math:`c\lVert w\rVert/(\lVert g\rVert       :math:`v \leftarrow \mu v + (1-d)\eta r u`,
               + \lambda\lVert w\rVert + \epsilon)`          :math:`w \leftarrow w - v`
``"optax"``    :math:`c\lVert w\rVert/(\lVert u\rVert       as ``"paper"``
               + \epsilon)`
``"timm"``     as ``"paper"``, adapted only when            :math:`b \leftarrow \mu b + (1-d) r u`
               :math:`\lambda \ne 0` (or ``always_adapt``)  (:math:`b = ru` at first),
                                                            :math:`w \leftarrow w - \eta b`
=============  ==========================================  ==========================================

:func:`lars_multi.lars_update` is the step of the ``REFERENCE`` rule below (the
reference's: :math:`r = \lVert w\rVert/(\lVert g\rVert + 10^{-12})`, divided by
:math:`\lambda\lVert w\rVert` where that is positive; :math:`u = g`; no momentum).

Nesterov steps by :math:`\mu v_{new} + \eta r u` (paper, optax) or
:math:`\eta (r u + \mu b_{new})` (timm); ``trust_clip`` replaces :math:`r` by
:math:`\min(r/\eta, 1)` (apex LARC). A preset is only these choices and its
library's defaults: every knob works with every preset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import UnknownPresetError


@dataclass(frozen=True)
class RankMask:
    """A preset's default mask: the arrays of at least ``min_rank`` dimensions. A
    mask callable, ``(path, array) -> bool``; :meth:`of_shapes` asks many arrays
    at once, from their shapes."""

    min_rank: int

    def __call__(self, path: Any, array: Any) -> bool:
        return len(array.shape) >= self.min_rank

    def of_shapes(self, shapes: Sequence[Any]) -> list[bool]:
        """The mask of many arrays at once, from their ``shapes``."""
        if self.min_rank == 0:
            return [True] * len(shapes)
        return list(map(self.min_rank.__le__, map(len, shapes)))  # (rank >= min_rank)


# Large-batch practice: biases and normalization scales (1-D) are left out.
_MATRICES = RankMask(2)
_EVERYTHING = RankMask(0)


@dataclass(frozen=True)
class Preset:
    """One library's LARS convention."""

    name: str
    ratio_of_update: bool  # r = c|w| / (|u| + eps), else c|w| / (|g| + lambda |w| + eps)
    lr_in_buffer: bool  # the buffer accumulates eta r u (paper, optax), else r u (timm)
    adapt_needs_decay: bool  # adapt only where weight decay applies, unless always_adapt (timm)
    eps: float
    default_mask: RankMask
    # r = 1 unless both norms are > 0, a NaN norm too (timm); else r = 1 where a norm is
    # 0, and a NaN norm gives a NaN ratio (paper, optax: as optax.lars)
    one_unless_positive: bool = False
    # lambda divides r (no fallback where a norm is 0) and u = g: the reference's rule
    decay_divides_ratio: bool = False


PRESETS = {
    "paper": Preset("paper", False, True, False, 0.0, _MATRICES),
    "optax": Preset("optax", True, True, False, 0.0, _EVERYTHING),
    "timm": Preset("timm", False, False, True, 1e-8, _EVERYTHING, one_unless_positive=True),
}

# The rule of lars_update (not an optimizer convention, so not in PRESETS).
REFERENCE = Preset("reference", False, True, False, 1e-12, _EVERYTHING, decay_divides_ratio=True)


def get_preset(name: Any) -> Preset:
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        raise UnknownPresetError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return preset
