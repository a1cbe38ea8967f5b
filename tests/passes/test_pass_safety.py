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


def _module(shapes, k_perm):
    """main(q, k, v) = softmax(q @ permute(k) * 0.125) @ v on the given shapes (matmul broadcasting)."""
    params = [relax.Var(n, relax.TensorType(list(s), F32)) for n, s in zip("qkv", shapes)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            q, k, v = params
            s = bb.emit(relax.op.matmul(q, relax.op.permute_dims(k, k_perm)))
            p = bb.emit(relax.op.nn.softmax(bb.emit(relax.op.multiply(s, relax.const(0.125, F32))), axis=-1))
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
