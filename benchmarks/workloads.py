"""The workloads: seeded NumPy data that every backend converts to its own arrays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESNET50_TENSORS = 161
RESNET50_PARAMETERS = 25_557_032
MANY_SMALL_TENSORS = 2_000
LARGE_ELEMENTS = 2**25
SEED = 0

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Workload:
    """Weights and gradients as ``name -> float32 array``.

    ``single`` workloads hold one array, passed to ``lars_update`` as an array,
    not as a tree.
    """

    name: str
    description: str
    w: dict[str, np.ndarray]
    g: dict[str, np.ndarray]
    single: bool

    @property
    def n_tensors(self) -> int:
        return len(self.w)

    @property
    def n_elements(self) -> int:
        return sum(a.size for a in self.w.values())

    @property
    def largest(self) -> str:
        """The name of the largest tensor."""
        return max(self.w, key=lambda k: self.w[k].size)

    def subset(self, n: int) -> Workload:
        """The first ``n`` tensors only (all of them when ``n`` is 0 or larger)."""
        if n <= 0 or n >= self.n_tensors:
            return self
        keys = list(self.w)[:n]
        description = f"{self.description}; first {n} tensors only"
        return Workload(
            self.name, description, {k: self.w[k] for k in keys}, {k: self.g[k] for k in keys}, self.single
        )

    def check_keys(self) -> list[str]:
        """A few leaves compared across contenders: first, largest, last."""
        names = list(self.w)
        return list(dict.fromkeys([names[0], self.largest, names[-1]]))


def _bn(shapes: Shapes, prefix: str, channels: int) -> None:
    shapes[f"{prefix}.weight"] = (channels,)
    shapes[f"{prefix}.bias"] = (channels,)


def _bottleneck(shapes: Shapes, prefix: str, in_ch: int, width: int, downsample: bool) -> int:
    """One torchvision ``Bottleneck`` (1x1, 3x3, 1x1 convs, expansion 4); returns its output channels."""
    out_ch = width * 4
    shapes[f"{prefix}.conv1.weight"] = (width, in_ch, 1, 1)
    _bn(shapes, f"{prefix}.bn1", width)
    shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
    _bn(shapes, f"{prefix}.bn2", width)
    shapes[f"{prefix}.conv3.weight"] = (out_ch, width, 1, 1)
    _bn(shapes, f"{prefix}.bn3", out_ch)
    if downsample:
        shapes[f"{prefix}.downsample.0.weight"] = (out_ch, in_ch, 1, 1)
        _bn(shapes, f"{prefix}.downsample.1", out_ch)
    return out_ch


def resnet50_shapes() -> Shapes:
    """ResNet-50's trainable parameters in torchvision's order and names."""
    shapes: Shapes = {"conv1.weight": (64, 3, 7, 7)}
    _bn(shapes, "bn1", 64)
    in_ch = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for block in range(blocks):
            in_ch = _bottleneck(shapes, f"layer{stage}.{block}", in_ch, width, downsample=block == 0)
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert len(shapes) == RESNET50_TENSORS, len(shapes)
    assert total == RESNET50_PARAMETERS, total
    return shapes


def tiny_shapes() -> Shapes:
    return {"w": (2, 3)}


def many_small_shapes(seed: int = SEED) -> Shapes:
    """2,000 vectors of 64 to 4,096 elements, sizes drawn from a seeded generator."""
    sizes = np.random.default_rng(seed + 1).integers(64, 4096, size=MANY_SMALL_TENSORS, endpoint=True)
    return {f"t{i:04d}": (int(n),) for i, n in enumerate(sizes)}


def large_shapes() -> Shapes:
    return {"w": (LARGE_ELEMENTS,)}


def _random_tree(shapes: Shapes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}


@dataclass(frozen=True)
class _Spec:
    shapes: Callable[[], Shapes]
    description: str
    single: bool


SPECS: dict[str, _Spec] = {
    "tiny": _Spec(tiny_shapes, "one 2x3 float32 array", True),
    "resnet50": _Spec(resnet50_shapes, "ResNet-50 parameter tree: 161 tensors, 25,557,032 float32", False),
    "many_small": _Spec(many_small_shapes, "2,000 tensors of 64-4,096 float32 elements", False),
    "large": _Spec(large_shapes, "one tensor of 2**25 (32M) float32 elements", True),
}
NAMES = tuple(SPECS)
OPTIMIZER_NAMES = ("resnet50", "many_small")  # (the optimizer step's: python -m benchmarks --optimizer)


def build(name: str, seed: int = SEED) -> Workload:
    """The workload ``name`` with standard-normal weights and gradients."""
    spec = SPECS[name]
    shapes = spec.shapes()
    rng = np.random.default_rng(seed)
    return Workload(name, spec.description, _random_tree(shapes, rng), _random_tree(shapes, rng), spec.single)
