"""Dynamic task claiming (`ops._tasks`): every task runs exactly once, on any thread count, and
the CPU kernels claim their tiles with one atomic instruction."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm

from shadowattn_tvm._compat import T
from shadowattn_tvm.block import AttentionBlock, CausalMode
from shadowattn_tvm.ops import _isa, pilot, sparse_attention, topk, topk_group
from shadowattn_tvm.ops._tasks import FETCH_ADD_IR, WORKERS, claim

N = 1 << 20


@T.prim_func
def _claim_all(counter_h: T.handle, runs_h: T.handle, done_h: T.handle):
    T.func_attr({"global_symbol": "main", "tirx.noalias": True})
    counter = T.match_buffer(counter_h, (1,), "int64")
    runs = T.match_buffer(runs_h, (N,), "int32")
    done = T.match_buffer(done_h, (WORKERS,), "int64")  # tasks each worker ran
    with T.attr(0, "pragma_import_llvm", FETCH_ADD_IR):
        for worker in T.parallel(WORKERS):
            tk = T.alloc_buffer((1,), "int64", scope="global")
            tk[0] = claim(counter)
            while tk[0] < N:
                runs[tk[0]] = 1
                done[worker] = done[worker] + 1
                tk[0] = claim(counter)


def test_every_task_is_claimed_once():
    """Both threads claim (tasks of a few instructions); the workers' private tallies add up to
    the task count and every task ran. (That the claim is atomic is checked in the assembly.)"""
    func = tvm.compile(_claim_all, target="llvm")
    counter = tvm.runtime.tensor(np.zeros(1, "int64"))
    runs = tvm.runtime.tensor(np.zeros(N, "int32"))
    done = tvm.runtime.tensor(np.zeros(WORKERS, "int64"))
    func(counter, runs, done)
    assert (runs.numpy() == 1).all(), "a task never ran"
    assert int(done.numpy().sum()) == N, "a task ran twice"
    assert int(counter.numpy()[0]) == N + WORKERS  # each worker's last claim finds none left


BLOCK = AttentionBlock(0, 14, 2, 64, CausalMode.BOTTOM_RIGHT, 0.125, "float32")
SEQ = tvm.tirx.Var("n", "int64")
KERNELS = {
    "pilot": lambda: pilot.pilot_scores(BLOCK, (1, 14, SEQ, 64), SEQ),
    "topk": lambda: topk.topk_indices(BLOCK, 16),
    "topk_group": lambda: topk_group.topk_group_indices(BLOCK, 16),
    "sparse": lambda: sparse_attention.sparse_attention(BLOCK, (1, 14, SEQ, 64), SEQ, 64, tvm.tirx.Var("k", "int64")),
    "sparse_group": lambda: sparse_attention.sparse_attention_group(BLOCK, (1, 14, SEQ, 64), SEQ, 64,
                                                                    tvm.tirx.Var("k", "int64")),
}


@pytest.mark.parametrize("name", KERNELS)
def test_cpu_kernels_claim_tiles_atomically(name):
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    with target:
        func = KERNELS[name]()
        assert _isa.current_isa() == _isa.AVX2
    asm = tvm.compile(func.with_attr("global_symbol", "main"), target=target).mod.inspect_source("asm")
    assert re.search(r"^\s*lock\s+xaddq\s", asm, re.M), "tiles should be claimed with an atomic fetch-and-add"
    assert "sat_fetch_add" not in asm, "the imported fetch-and-add should be inlined"
