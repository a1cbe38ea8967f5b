"""Dynamic task claiming for the hand-written CPU kernels.

TVM lowers a ``T.parallel(n)`` loop to a static split: each pool thread runs a fixed, contiguous
share of the n iterations. When the cores are not equally fast (big.LITTLE phones; a VM whose
virtual CPUs share their physical cores with other guests), the kernel then waits for the slowest
core. The kernels instead run ``T.parallel(WORKERS)`` workers that claim tasks one by one from a
shared counter, so a faster core simply takes more of them:

    counter = T.alloc_buffer((1,), "int64", scope="global")
    counter[0] = 0
    with T.attr(0, "pragma_import_llvm", FETCH_ADD_IR):
        for worker in T.parallel(WORKERS):
            ...claim(counter) until it returns >= the number of tasks...

TVM 0.27's CPU code generator has no atomic add (``tirx.atomic_add`` is CUDA-only), so the
counter's fetch-and-add is a few lines of LLVM IR (`FETCH_ADD_IR`, one ``atomicrmw``) that the
LLVM code generator links into the module (the ``pragma_import_llvm`` attribute; ``linkonce_odr``,
so every kernel of a module may import it) and inlines; any LLVM target has the instruction
(``lock xadd`` on x86-64, ``ldaddal`` or an exclusive-load loop on aarch64). The pool still splits
the WORKERS workers statically, but the first worker on each thread claims tasks until none are
left and the others then find the counter exhausted, so WORKERS only needs to be at least the
largest thread pool.
"""
from __future__ import annotations

from .._compat import T

WORKERS = 64  # at least any CPU's thread pool; idle workers claim once and return

FETCH_ADD_IR = """
define linkonce_odr i64 @sat_fetch_add(ptr %counter, i64 %n) alwaysinline {
  %old = atomicrmw add ptr %counter, i64 %n seq_cst
  ret i64 %old
}
"""


def claim(counter):
    """The next task number: an atomic fetch-and-add of 1 on counter[0] (int64)."""
    return T.call_extern("int64", "sat_fetch_add", T.address_of(counter[0]), T.int64(1))
