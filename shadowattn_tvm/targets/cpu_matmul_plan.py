"""The register block and task tiles of the default CPU matmul (`cpu_generic.schedule_matmul`),
chosen from the target's vector ISA (`ops._isa`), its core count and the matmul's shape.
Plain arithmetic: no schedule is touched here."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .._compat import tvm
from ..ops._isa import host_isa, isa_of

_L2_PANEL_BYTES = 256 * 1024  # packed B tile (K x Nc): half a 512 KiB L2
_SHORT_K = 128  # reductions this short are output-bound (see plan_matmul)
_TASK_ROWS = 512  # rows per task: each task packs its B tile once, so tall tasks amortise packing



@dataclass(frozen=True)
class CoreShape:
    """What a CPU target gives a float32 micro-kernel: the vector ISA (`ops._isa`) and its cores."""

    lanes: int  # float32 lanes per vector register
    registers: int  # architectural vector registers
    threads: int  # cores the parallel loops are split over

    @staticmethod
    def of(target=None) -> "CoreShape":
        """From `target` (default: the current one; none at all: this host's CPU)."""
        target = target if target is not None else tvm.target.Target.current(allow_none=True)
        isa = isa_of(target) if target is not None else host_isa()
        cores = target.attrs.get("num-cores") if target is not None else None
        threads = int(cores) if cores is not None and int(cores) > 0 else (os.cpu_count() or 1)
        return CoreShape(isa.lanes(), isa.registers, threads)


@dataclass(frozen=True)
class MatmulPlan:
    """Register block mr x (nv * lanes), and tiles of rows x cols register blocks per task."""

    mr: int
    nv: int
    lanes: int
    rows: int
    cols: int
    pack: bool
    row_major: bool = False  # walk a task's register blocks row by row (else column strip by strip)

    @property
    def nr(self) -> int:
        return self.nv * self.lanes


def _largest_divisor(n: int, bound: int) -> int:
    return max(d for d in range(1, max(1, min(n, bound)) + 1) if n % d == 0)


def plan_matmul(m: int | None, n: int | None, k: int | None, batch: int | None, isa: CoreShape) -> MatmulPlan:
    """Pick the register block and the task tiles for an (m x k) @ (k x n) matmul."""
    lanes = isa.lanes
    if n is not None and n % lanes:
        lanes = math.gcd(n, lanes)  # odd widths: narrower vectors (1 = scalar), never a tail lane
    # short reductions (Q @ K^T: k = head dim) are bound by writing C and reading the epilogue's
    # inputs: their tasks write whole row segments. Long ones keep a B panel in L1 across rows.
    best, short = None, k is not None and k <= _SHORT_K
    for mr in range(1, 9):
        for nv in range(1, 7):
            if mr * nv + nv + 1 > isa.registers:  # accumulators + B vectors + one broadcast
                continue
            exact = (m is None or m % mr == 0) + (n is None or n % (nv * lanes) == 0)
            fit = (m is None or mr <= m) and (n is None or nv * lanes <= max(n, lanes))
            # ties: taller blocks when C's rows are written whole (short k), else wider ones
            key = (fit, exact, mr * nv, 2 * mr * nv / (mr + nv), mr if short else nv)
            if best is None or key > best[0]:
                best = (key, mr, nv)
    _, mr, nv = best
    nr = nv * lanes
    col_blocks = -(-n // nr) if n is not None else 64
    row_blocks = -(-m // mr) if m is not None else 64
    cols = _largest_divisor(col_blocks, max(1, _L2_PANEL_BYTES // (4 * (k or 512) * nr)))
    rows = _largest_divisor(row_blocks, max(1, _TASK_ROWS // mr))
    while _unbalanced((batch or 1) * (row_blocks // rows) * (col_blocks // cols), isa.threads) and rows * cols > 1:
        if rows >= cols and rows > 1:
            rows = _largest_divisor(row_blocks, rows - 1)
        else:
            cols = _largest_divisor(col_blocks, cols - 1)
    pack = None not in (m, n, k) and n % nr == 0 and rows * mr >= 16
    return MatmulPlan(mr, nv, lanes, rows, cols, pack, row_major=short)


def _unbalanced(tasks: int, threads: int) -> bool:
    """TVM splits a parallel loop into one static chunk per thread: with few tasks, or a
    remainder, a core idles at the end."""
    return tasks < 4 * threads or (tasks % threads != 0 and tasks < 16 * threads)
