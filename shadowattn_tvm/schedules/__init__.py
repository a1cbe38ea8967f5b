"""Per-target schedules for the shadowAttn kernels; a registry picks by target kind, not if-chains."""
from __future__ import annotations

from types import ModuleType

from . import cpu

_BY_KIND: dict[str, ModuleType] = {"llvm": cpu}


def for_target(target) -> ModuleType:
    """The schedule module of `target` (a tvm Target or None for the host CPU).

    Each module exposes schedule_absmax, schedule_quantize, schedule_pilot and
    schedule_sparse_attention (PrimFunc -> scheduled PrimFunc).
    """
    kind = "llvm" if target is None else str(target.kind.name)
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise ValueError(
            f"no shadowAttn kernel schedules for target kind {kind!r}; known: {sorted(_BY_KIND)}"
        ) from None
