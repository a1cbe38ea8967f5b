"""The CPU lane's kernels as the phone build compiles them (aarch64, NEON widths from the target),
run on the emulated phone over RPC and checked against numpy: int8 pilot (int32 and int16
scores), top-k (per head, masked, group) and sparse attention (per head, group).

tests/ops/test_kernels_neon.py checks the assembly is NEON; tests/ops/test_kernels.py runs the
NEON configuration's loop structure on the host. This file runs the aarch64 code itself.
"""
import gc

import numpy as np
import pytest
import tvm

from shadowattn_tvm.block import AttentionBlock, CausalMode, max_keep_count
from shadowattn_tvm.ops import _isa, pilot, reference, sparse_attention, topk, topk_group
from shadowattn_tvm.runtime.rpc_session import Endpoint, open_session
from shadowattn_tvm.targets import cpu_kernels as cpu
from shadowattn_tvm.targets import get
from shadowattn_tvm.targets.export import fcompile

pytestmark = pytest.mark.emulated

DEVICE = get("snapdragon-8gen3")
BLOCK = AttentionBlock(0, 6, 2, 64, CausalMode.BOTTOM_RIGHT, 0.125, "float32")
MASKED = AttentionBlock(0, 6, 2, 64, CausalMode.NONE, 0.125, "float32", has_mask=True)
SQ, SKV = 37, 77  # vector tails everywhere


@pytest.fixture
def device(emulated_phone, tmp_path):
    endpoint = Endpoint(emulated_phone.host, emulated_phone.tracker_port, emulated_phone.key)

    def run(func, *arrays, out_shape, out_dtype):
        """Build `func` for the phone's CPU, upload it, run it on RPC tensors, return the output.
        The session lives for this call only: a held session keeps the phone busy for other tests."""
        with DEVICE.cpu:
            assert _isa.current_isa().name == "neon"
            func = func() if callable(func) else func
        lib = tvm.compile(func.with_attr("global_symbol", "main"), target=DEVICE.cpu)
        path = tmp_path / f"k{len(list(tmp_path.iterdir()))}.so"
        lib.export_library(str(path), fcompile=fcompile(DEVICE))
        result = _on_phone(endpoint, path, arrays, out_shape, out_dtype)
        gc.collect()  # the session closes when its last reference dies (TVM objects sit in cycles): phone freed
        return result

    return run


def _on_phone(endpoint, path, arrays, out_shape, out_dtype):
    session = open_session(endpoint)
    session.upload(str(path))
    dev = session.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    session.load_module(path.name)["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays], out)
    return out.numpy()


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("out_dtype", ["int32", "int16"])
def test_pilot_on_the_phone_cpu(device, rng, out_dtype):
    q8 = rng.integers(-127, 128, (1, 6, SQ, 64)).astype("int8")
    k8 = rng.integers(-127, 128, (1, 2, SKV, 64)).astype("int8")
    out = device(lambda: cpu.schedule_pilot(pilot.pilot_scores(BLOCK, q8.shape, SKV, out_dtype=out_dtype)),
                 q8, k8.transpose(0, 1, 3, 2), out_shape=(1, 6, SQ, SKV), out_dtype=out_dtype)
    expected = reference.pilot_scores(q8, k8, BLOCK, out_dtype)
    for i in range(SQ):  # the causally masked part of a row is undefined
        visible = i + 1 + SKV - SQ
        np.testing.assert_array_equal(out[:, :, i, :visible], expected[:, :, i, :visible])


@pytest.mark.parametrize("score_dtype", ["int32", "int16"])
def test_topk_on_the_phone_cpu(device, rng, score_dtype):
    scores = rng.integers(-60, 60, (1, 6, SQ, SKV)).astype(score_dtype)  # many ties
    ratios = np.array([0.1, 0.2, 0.25, 0.5, 0.9, 1.0])
    top = max_keep_count(1.0, SKV, 3)
    out = device(lambda: topk.topk_indices(BLOCK, 3, score_dtype=score_dtype), scores, ratios,
                 out_shape=(1, 6, SQ, top), out_dtype="int32")
    np.testing.assert_array_equal(out, reference.topk_indices(scores, ratios, BLOCK, 3, top))


def test_masked_and_group_topk_on_the_phone_cpu(device, rng):
    scores = rng.integers(-2000, 2000, (1, 6, SQ, SKV)).astype("int32")
    mask = (rng.integers(-8, 8, (1, 1, SQ, SKV)) / 8).astype("float32")
    mask[rng.random(mask.shape) < 0.3] = -1e9
    qs, ks = (2.0 ** -rng.integers(3, 7, 6)).astype("float32"), np.array([2 ** -5, 2 ** -4], "float32")
    top = max_keep_count(0.5, SKV, 3)
    per_head = device(lambda: topk.topk_indices(MASKED, 3, mask.shape), scores, np.full(6, 0.5), qs, ks, mask,
                      out_shape=(1, 6, SQ, top), out_dtype="int32")
    np.testing.assert_array_equal(per_head, reference.topk_indices(scores, np.full(6, 0.5), MASKED, 3, top,
                                                                   mask=mask, q_scale=qs, k_scale=ks))
    group = device(lambda: topk_group.topk_group_indices(BLOCK, 3), scores, np.full(2, 0.3), qs, ks,
                   out_shape=(1, 2, SQ, top), out_dtype="int32")
    np.testing.assert_array_equal(group, reference.topk_group_indices(scores, np.full(2, 0.3), BLOCK, 3, top, qs, ks))


@pytest.mark.parametrize("group_mode", [False, True])
def test_sparse_attention_on_the_phone_cpu(device, rng, group_mode):
    q = rng.standard_normal((1, 6, SQ, 64)).astype("float32")
    k, v = (rng.standard_normal((1, 2, SKV, 64)).astype("float32") for _ in range(2))
    heads = 2 if group_mode else 6
    scores = rng.integers(-4000, 4000, (1, heads, SQ, SKV)).astype("int32")
    top = max_keep_count(0.3, SKV, 8)
    sel_block = AttentionBlock(0, heads, 2, 64, CausalMode.BOTTOM_RIGHT, 0.125, "float32")
    idx = reference.topk_indices(scores, np.full(heads, 0.3), sel_block, 8, top)
    make = sparse_attention.sparse_attention_group if group_mode else sparse_attention.sparse_attention
    out = device(lambda: make(BLOCK, q.shape, SKV, 64, top), q, k, v, idx, out_shape=q.shape, out_dtype="float32")
    expected = (reference.sparse_attention_group if group_mode else reference.sparse_attention)(q, k, v, idx, BLOCK)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
