"""Default CPU schedules for the rest of a model (matmuls, norms, softmax, elementwise).

TVM's CPU pipeline schedules nothing, so a legalized model runs serial scalar loops
(~1.7 GFLOP/s for a matmul here). These rules are deliberately simple and always race-free:
parallel loops only ever cover spatial (output) iterations of one block.
"""
from __future__ import annotations

from .._compat import Schedule, tirx

_SPATIAL, _REDUCE = 0, 2  # IterVar.iter_type values


def _static(extent) -> int | None:
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def _iter_types(sch, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _is_matmul(sch, block) -> bool:
    types = _iter_types(sch, block)
    loops = sch.get_loops(block)
    return (len(types) == len(loops) >= 3 and types[-1] == _REDUCE and types.count(_REDUCE) == 1
            and len(sch.get(block).reads) == 2)


def schedule_matmul(sch, block) -> None:
    """Tile i by 8, j by 32, k by 4; parallel over batch*i tiles; vectorise j (TVM_0_27.md)."""
    *batch, i, j, k = sch.get_loops(block)
    j_extent, k_extent = _static(sch.get(j).extent), _static(sch.get(k).extent)
    io, ii = sch.split(i, [None, 8])
    if j_extent is not None and j_extent % 32 == 0:
        jo, ji = sch.split(j, [None, 32])
    else:
        jo, ji = j, None
    if k_extent is not None and k_extent % 4 == 0:
        ko, ki = sch.split(k, [None, 4])
    else:
        ko, ki = k, None
    order = [io, jo, ko, ii] + ([ki] if ki is not None else []) + ([ji] if ji is not None else [])
    sch.reorder(*order)
    sch.parallel(sch.fuse(*batch, io) if batch else io)
    if ki is not None:
        sch.unroll(ki)
    if ji is not None:
        sch.vectorize(ji)
    sch.decompose_reduction(block, ko)


def schedule_outer_parallel(sch, block) -> None:
    """Fuse the leading spatial loops of a block and run them in parallel."""
    loops = sch.get_loops(block)
    types = _iter_types(sch, block)
    if len(types) != len(loops) or not loops:
        return
    lead = 0
    while lead < len(loops) and types[lead] == _SPATIAL:
        lead += 1
    if lead == len(loops) and lead > 1:
        lead -= 1  # keep the innermost loop for the vectoriser
    if lead == 0:
        return
    sch.parallel(sch.fuse(*loops[:lead]) if lead > 1 else loops[0])


def schedule_default(func):
    """Schedule every top-level block of an unscheduled PrimFunc; leaves what it cannot handle."""
    sch = Schedule(func)
    root = sch.get_sblock("root") if _has_root(sch) else None
    blocks = sch.get_child_blocks(root) if root is not None else []
    for block in blocks:
        try:
            if _is_matmul(sch, block):
                schedule_matmul(sch, block)
            else:
                schedule_outer_parallel(sch, block)
        except Exception:  # noqa: BLE001 - a block we cannot schedule stays as it is
            continue
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False
