"""Pass safety: forms the rewrite cannot take stay dense and still compile; internal errors in one
block leave that block dense (reported), and strict=True turns them into an error."""
from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

import shadowattn_tvm as sat
from shadowattn_tvm.passes import detect_attention, split_sparse_attention
from shadowattn_tvm.passes.pipeline import UnsupportedAttentionError
from shadowattn_tvm.testing.forms import stacked_module

from ..conftest import run_module

F32 = "float32"


def _module(shapes, k_perm, dtype=F32):
    """main(q, k, v[, mask]) = softmax(q @ permute(k) * 0.125 [+ mask]) @ v (matmul broadcasting;
    a fourth shape is an additive mask, added in `dtype` as fp16 exporters do, softmax in fp32)."""
    params = [relax.Var(n, relax.TensorType(list(s), dtype)) for n, s in zip("qkvm", shapes)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            q, k, v = params[:3]
            s = bb.emit(relax.op.matmul(q, relax.op.permute_dims(k, k_perm)))
            s = bb.emit(relax.op.multiply(s, relax.const(0.125, dtype)))
            if len(params) == 4:
                s = bb.emit(relax.op.add(s, params[3]))
            p = bb.emit(relax.op.astype(relax.op.nn.softmax(relax.op.astype(s, F32), axis=-1), dtype))
            out = bb.emit_output(relax.op.matmul(p, v))
        bb.emit_func_output(out)
    return bb.get()


CASES = {  # name: (q, k, v shapes, K permutation, expected report)
    "3-D batched [B·H, S, D]": ([(6, 24, 16), (6, 24, 16), (6, 24, 16)], [0, 2, 1], "rewritten"),
    "one K/V head broadcast by matmul (MQA)": ([(2, 4, 24, 16), (2, 1, 24, 16), (2, 1, 24, 16)], [0, 1, 3, 2],
                                               "rewritten"),
    "V alone broadcast": ([(2, 4, 24, 16), (2, 4, 24, 16), (2, 1, 24, 16)], [0, 1, 3, 2], "V has 1 heads"),
    "3-D K against 4-D Q": ([(1, 4, 24, 16), (4, 24, 16), (1, 4, 24, 16)], [0, 2, 1], "ranks (4, 3, 4)"),
    "2-D K": ([(1, 4, 24, 16), (24, 16), (1, 4, 24, 16)], [1, 0], "ranks (4, 2, 4)"),
    "batch broadcast": ([(2, 4, 24, 16), (1, 4, 24, 16), (1, 4, 24, 16)], [0, 1, 3, 2], "batch sizes differ"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_broadcast_and_batched_forms_compile_and_equal_dense(name, rng):
    shapes, perm, expected = CASES[name]
    mod = _module(shapes, perm)
    inputs = [rng.standard_normal(s).astype(F32) for s in shapes]
    report = sat.AttentionReport()
    got = run_module(mod, inputs, sat.pipeline(keep=1.0, k_min=1, report=report))
    (cand,) = report.candidates
    if expected == "rewritten":
        assert cand.status == "rewritten", cand.reason
    else:
        assert cand.status == "dense" and expected in cand.reason
    np.testing.assert_allclose(got, run_module(mod, inputs), rtol=1e-4, atol=1e-5)


def test_an_internal_error_in_one_block_leaves_it_dense_and_the_module_builds(monkeypatch, rng):
    mod = stacked_module(2)
    inputs = [rng.standard_normal([int(x) for x in p.ty.shape.values]).astype(F32) for p in mod["main"].params]
    real = split_sparse_attention.sparse_ops.sparse_attention

    def fails_for_layer_1(block, *args):
        if block.layer == 1:
            raise IndexError("kernel generator bug")
        return real(block, *args)

    monkeypatch.setattr(split_sparse_attention.sparse_ops, "sparse_attention", fails_for_layer_1)
    report = sat.AttentionReport()
    got = run_module(mod, inputs, sat.pipeline(keep=1.0, k_min=1, report=report))
    assert [c.status for c in report.candidates] == ["rewritten", "dense"]
    assert "internal error while splitting the block" in report.candidates[1].reason
    assert "IndexError: kernel generator bug" in report.candidates[1].reason
    np.testing.assert_allclose(got, run_module(mod, inputs), rtol=1e-4, atol=1e-5)
    with pytest.raises(UnsupportedAttentionError, match="kernel generator bug"):
        run_module(mod, inputs, sat.pipeline(keep=1.0, strict=True))


def test_an_internal_error_while_analysing_leaves_the_block_dense(monkeypatch, rng):
    def broken(*_args):
        raise ZeroDivisionError("analyser bug")

    monkeypatch.setattr(detect_attention, "_verify", broken)
    mod = stacked_module(2)
    report = sat.AttentionReport()
    inputs = [rng.standard_normal([int(x) for x in p.ty.shape.values]).astype(F32) for p in mod["main"].params]
    got = run_module(mod, inputs, sat.pipeline(keep=0.2, report=report))
    assert all(c.status == "dense" and "ZeroDivisionError: analyser bug" in c.reason for c in report.candidates)
    np.testing.assert_allclose(got, run_module(mod, inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,fill", [(F32, "-inf"), (F32, -1e9), (F32, "min"), (F32, -1e4),
                                        ("float16", "min"), ("float16", "-inf")])
@pytest.mark.parametrize("keep", [1.0, 0.2])
def test_rows_without_a_visible_key_equal_dense(dtype, fill, keep, rng):
    """Causal + left padding: the first rows of batch row 1 see only padding. Dense attention gives
    them the softmax over all keys of the filled logits (NaN for -inf fills), and so must we."""
    s, pad = 40, 12
    value = float(np.finfo(dtype).min) if fill == "min" else float(fill)
    mask = np.where(np.tril(np.ones((s, s), bool)), 0.0, value)[None, None].repeat(2, axis=0)
    mask[1, :, :, :pad] = value
    shapes = [(2, 4, s, 32), (2, 4, s, 32), (2, 4, s, 32), mask.shape]
    mod = _module(shapes, [0, 1, 3, 2], dtype)
    inputs = [(3 * rng.standard_normal(x)).astype(dtype) for x in shapes[:3]] + [mask.astype(dtype)]
    report = sat.AttentionReport()
    got = run_module(mod, inputs, sat.pipeline(keep=keep, k_min=1, report=report))
    assert report.candidates[0].status == "rewritten"
    dense = run_module(mod, inputs)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(dense))
    assert np.isnan(dense).any() == (fill == "-inf")
    blind = np.s_[1, :, :pad]  # the rows without a visible key: exact at any keep
    np.testing.assert_allclose(got[blind], dense[blind], rtol=2e-2 if dtype == "float16" else 1e-5, atol=2e-3)


def test_a_masked_block_without_the_hand_written_kernel_stays_dense(rng):
    shapes = [(1, 2, 16, 24), (1, 2, 16, 24), (1, 2, 16, 24), (1, 1, 16, 16)]  # head_dim 24: TE kernel
    mod = _module(shapes, [0, 1, 3, 2])
    inputs = [rng.standard_normal(x).astype(F32) for x in shapes]
    report = sat.AttentionReport()
    got = run_module(mod, inputs, sat.pipeline(keep=0.5, k_min=1, report=report))
    (cand,) = report.candidates
    assert cand.status == "dense" and "hand-written sparse kernel" in cand.reason
    np.testing.assert_allclose(got, run_module(mod, inputs), rtol=1e-5, atol=1e-6)
