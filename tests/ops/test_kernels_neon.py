"""The CPU kernels vectorise for aarch64 NEON: build them for an aarch64 target (LLVM inside TVM,
no emulator) and look for NEON vector instructions in the generated assembly.

Numerics at the NEON configuration (4 float32 lanes, 32 registers) run on the host in
test_kernels.py (`isa=NEON`); this file checks what the aarch64 backend makes of it.
"""
from __future__ import annotations

import re

import pytest
import tvm

from shadowattn_tvm.block import AttentionBlock, CausalMode
from shadowattn_tvm.ops import _isa, pilot, sparse_attention, topk, topk_group
from shadowattn_tvm.targets import cpu_kernels as cpu

AARCH64 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
BLOCK = AttentionBlock(0, 14, 2, 64, CausalMode.BOTTOM_RIGHT, 0.125, "float32")
MASKED = AttentionBlock(0, 14, 2, 64, CausalMode.NONE, 0.125, "float32", has_mask=True)
SEQ = tvm.tirx.Var("n", "int64")


def _asm(make) -> str:
    """Generate the kernel inside the target's scope (as the passes do) and return its assembly."""
    with AARCH64:
        func = make()
        if func.attrs is None or "global_symbol" not in func.attrs:
            func = func.with_attr("global_symbol", "main")
        return tvm.compile(func, target=AARCH64).mod.inspect_source("asm")


def _count(asm: str, pattern: str) -> int:
    return len(re.findall(pattern, asm, re.M))


def test_target_isa_is_neon():
    assert _isa.isa_of(AARCH64) == _isa.NEON
    with AARCH64:
        assert _isa.current_isa() == _isa.NEON
        assert cpu.vector_lanes() == 8


FMLA = r"^\s+fmla\s+v\d+\.4s"
VLOAD = r"^\s+(ld1|ldr\s+q\d+|ldp\s+q\d+)"


@pytest.mark.parametrize("group_mode", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_sparse_attention_uses_neon(group_mode, masked):
    block = MASKED if masked else BLOCK
    mask_shape = (1, 1, SEQ, SEQ) if masked else None
    gen = sparse_attention.sparse_attention_group if group_mode else sparse_attention.sparse_attention
    asm = _asm(lambda: gen(block, (1, 14, SEQ, 64), SEQ, 64, tvm.tirx.Var("k", "int64"), mask_shape))
    # logits: 8 keys x 16 q vectors; p·V: 16 accumulators per key
    assert _count(asm, FMLA) >= 64, "the dot and p·V loops should be NEON FMAs"
    assert _count(asm, r"^\s+faddp\s+v\d+\.4s") >= 2, "the transposed reduction should use pairwise adds"
    assert _count(asm, VLOAD) >= 16, "K/V rows should load as q registers"


@pytest.mark.parametrize("score_dtype", ["int32", "int16"])
@pytest.mark.parametrize("masked", [False, True])
def test_topk_uses_neon(score_dtype, masked):
    block = MASKED if masked else BLOCK
    asm = _asm(lambda: topk.topk_indices(block, 16, (1, 1, SEQ, SEQ) if masked else None, score_dtype=score_dtype))
    lanes = r"(4s|8h)"
    assert _count(asm, rf"^\s+cm(ge|gt)\s+v\d+\.{lanes}") >= 2, "counting passes should compare vectors"
    assert _count(asm, rf"^\s+(smin|smax)\s+v\d+\.{lanes}") >= 2, "the range pass should be vector min/max"
    assert _count(asm, r"^\s+(addv|cnt)\s") >= 1, "compaction masks should come from vector reductions"


def test_group_topk_uses_neon():
    asm = _asm(lambda: topk_group.topk_group_indices(BLOCK, 16))
    assert _count(asm, r"^\s+(fmax(nm)?|fcmgt)\s+v\d+\.4s") >= 2, "the group rank is a vector max over heads"
    assert _count(asm, r"^\s+(scvtf|fmul)\s+v\d+\.4s") >= 4, "the logit gaps are computed in vectors"
    assert _count(asm, r"^\s+cm(ge|gt)\s+v\d+\.4s") >= 2


@pytest.mark.parametrize("out_dtype", ["int32", "int16"])
def test_pilot_uses_neon_int8(out_dtype):
    asm = _asm(lambda: cpu.schedule_pilot(pilot.pilot_scores(BLOCK, (1, 14, SEQ, 64), SEQ, out_dtype=out_dtype)))
    widening = r"^\s+(sdot|smlal2?|smull2?|saddw2?)\s+v\d+\.(4s|8h)"
    assert _count(asm, widening) >= 8, "int8 products should be NEON widening multiplies (or sdot)"
    if out_dtype == "int16":
        assert _count(asm, r"^\s+(sshr|sqshrn2?|shrn2?|xtn2?|uzp1)\s+v\d+") >= 1, "scores narrow in vectors"
