"""DetectAttention: which forms are found, the composite's structure and attributes, what stays dense."""
from __future__ import annotations

import numpy as np
import pytest
import tvm_ffi
from tvm import relax

from shadowattn_tvm.block import AttentionBlock, CausalMode, KVMap
from shadowattn_tvm.ir_attrs import REPORT, attention_report
from shadowattn_tvm.passes import DetectAttention
from shadowattn_tvm.testing import AttentionSpec, attention_module, dense_reference, random_inputs
from shadowattn_tvm.testing.forms import stacked_module

from ..conftest import run_module

FORMS = [
    AttentionSpec(),
    AttentionSpec(gqa="expand", mask="causal_where"),
    AttentionSpec(gqa="tile", mask="padding", scale="divide"),
    AttentionSpec(gqa="mqa_broadcast", mask="none", scale="on_q"),
    AttentionSpec(gqa="none", mask="causal_triu", scale="none", batch=2),
    AttentionSpec(q_len=8, kv_len=24, mask="causal_where"),
    AttentionSpec(q_len=8, kv_len=24, mask="causal_top_left"),
    AttentionSpec(dtype="float16"),
    AttentionSpec(symbolic=True, mask="causal_where", gqa="expand"),
    AttentionSpec(form="nn.attention", gqa="none", mask="causal_const"),
    AttentionSpec(form="nn.attention", gqa="none", mask="none", q_len=8, kv_len=16),
    AttentionSpec(form="nn.attention", gqa="none", mask="padding"),
]


def _ids(spec):
    return f"{spec.form}-{spec.gqa}-{spec.mask}-{spec.scale}-{spec.dtype}{'-sym' if spec.symbolic else ''}"


def _calls(func):
    """(callee name, call) of every call binding in a function's first block."""
    out = []
    for b in func.body.blocks[0].bindings:
        if isinstance(b.value, relax.Call):
            op = b.value.op
            out.append((op.name_hint if isinstance(op, relax.GlobalVar) else op.name, b.value))
    return out


def _composites(mod):
    return {gv.name_hint: f for gv, f in mod.functions.items()
            if isinstance(f, relax.Function) and f.attrs is not None and "shadowattn.kind" in f.attrs}


@pytest.mark.parametrize("spec", FORMS, ids=_ids)
def test_every_form_is_outlined_with_typed_attrs(spec):
    mod = DetectAttention()(attention_module(spec))
    report = attention_report(mod)
    assert relax.analysis.check_well_formed(mod)
    (name, composite), = _composites(mod).items()
    assert name == "sat_attention_L0"
    block = AttentionBlock.from_attrs(composite.attrs)
    expected = spec.block()
    assert block == expected
    # GQA K/V enter at their own head count: the repeat is not materialised outside the composite
    assert composite.params[1].ty.shape.values[1] == expected.num_kv_heads
    assert [c.status for c in report.candidates] == ["rewritten"]


@pytest.mark.parametrize("spec", FORMS, ids=_ids)
def test_outlined_module_still_computes_dense_attention(spec):
    inputs = random_inputs(spec)
    out = run_module(DetectAttention()(attention_module(spec)), inputs)
    tol = 2e-3 if spec.dtype == "float16" else 1e-5
    np.testing.assert_allclose(out.astype("float64"), dense_reference(spec, inputs), rtol=tol, atol=tol)


def test_main_calls_the_composite_on_unrepeated_kv():
    mod = DetectAttention()(attention_module(AttentionSpec(gqa="repeat")))
    calls = _calls(mod["main"])
    names = [name for name, _ in calls]
    assert "relax.repeat" not in names and "relax.nn.softmax" not in names and "relax.matmul" not in names
    (call,) = [c for name, c in calls if name == "sat_attention_L0"]
    assert [int(x) for x in call.args[1].ty.shape.values] == [1, 2, 32, 16]  # K: 2 KV heads


def test_layers_are_numbered_in_program_order():
    mod = DetectAttention()(stacked_module(2))
    report = attention_report(mod)
    assert [c.layer for c in report.candidates] == [0, 1]
    names = [name for name, _ in _calls(mod["main"]) if name.startswith("sat_")]
    assert names == ["sat_attention_L0", "sat_attention_L1"]


def test_non_attention_graph_unchanged():
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    w = relax.Var("w", relax.TensorType((8, 8), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, w))
            p = bb.emit(relax.op.nn.softmax(y, axis=-1))  # softmax, but not feeding a matmul
            out = bb.emit_output(relax.op.add(p, x))
        bb.emit_func_output(out)
    mod = bb.get()
    after = DetectAttention()(mod)
    report = attention_report(after)
    assert tvm_ffi.structural_equal(after, mod)
    assert report.candidates == []


def _softmax_module(make_scores, dtype="float32", axis=-1):
    q = relax.Var("q", relax.TensorType((1, 2, 8, 4), dtype))
    k = relax.Var("k", relax.TensorType((1, 2, 8, 4), dtype))
    v = relax.Var("v", relax.TensorType((1, 2, 8, 4), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [q, k, v]):
        with bb.dataflow():
            s = bb.emit(relax.op.matmul(q, relax.op.permute_dims(k, [0, 1, 3, 2])))
            s = bb.emit(make_scores(s, q))
            p = bb.emit(relax.op.nn.softmax(s, axis=axis))
            out = bb.emit_output(relax.op.matmul(p, v))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("make,axis,dtype,reason", [
    (lambda s, q: relax.op.multiply(s, relax.op.astype(relax.op.sum(q), "float32")), -1, "float32",
     "non-constant"),
    (lambda s, q: relax.op.nn.relu(s), -1, "float32", "unsupported op relax.nn.relu"),
    (lambda s, q: s, 2, "float32", "softmax over axis 2"),
    (lambda s, q: s, -1, "bfloat16", "dtype bfloat16"),
])
def test_unsupported_blocks_stay_dense_with_a_reason(make, axis, dtype, reason):
    mod = _softmax_module(make, dtype=dtype, axis=axis)
    after = DetectAttention()(mod)
    report = attention_report(after)
    assert tvm_ffi.structural_equal(after.without_attr(REPORT), mod)  # code unchanged; the report says why
    (cand,) = report.candidates
    assert cand.status == "dense" and reason in cand.reason
    assert reason in report.table()


def test_softmax_weights_reshaped_before_pv_are_listed_dense():
    """BLOOM's form: 3-D batched Q·Kᵀ, a 4-D softmax between reshapes, 3-D P·V."""
    q, k, v = (relax.Var(n, relax.TensorType((2, 8, 4), "float32")) for n in "qkv")
    bb = relax.BlockBuilder()
    with bb.function("main", [q, k, v]):
        with bb.dataflow():
            s = bb.emit(relax.op.matmul(q, relax.op.permute_dims(k, [0, 2, 1])))
            p = bb.emit(relax.op.nn.softmax(relax.op.reshape(s, (1, 2, 8, 8)), axis=-1))
            out = bb.emit_output(relax.op.matmul(relax.op.reshape(p, (2, 8, 8)), v))
        bb.emit_func_output(out)
    mod = bb.get()
    after = DetectAttention()(mod)
    (cand,) = attention_report(after).candidates
    assert tvm_ffi.structural_equal(after.without_attr(REPORT), mod)
    assert cand.status == "dense" and "reshaped before the P·V matmul" in cand.reason


@pytest.mark.parametrize("scale,reason", [(-0.5, "softmax scale -0.5 is not positive"), (-2.0, "is not positive"),
                                          (0.0, "zero value")])
def test_non_positive_scale_stays_dense_and_equals_dense(scale, reason):
    from ..conftest import run_module
    import shadowattn_tvm as sat

    mod = _softmax_module(lambda s, q: relax.op.multiply(s, relax.const(scale, "float32")))
    after = DetectAttention()(mod)
    report = attention_report(after)
    (cand,) = report.candidates
    assert tvm_ffi.structural_equal(after.without_attr(REPORT), mod) and cand.status == "dense" and reason in cand.reason
    data = list(np.random.default_rng(1).standard_normal((3, 1, 2, 8, 4)).astype("float32"))
    np.testing.assert_array_equal(run_module(mod, data, sat.pipeline(keep=0.1, k_min=1)),
                                  run_module(mod, data, sat.lowering()))


def test_sliding_window_attention_is_reported():
    q = relax.Var("q", relax.TensorType((1, 8, 2, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [q]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.attention(q, q, q, causal_mask="BottomRight", window_size=4))
        bb.emit_func_output(out)
    report = attention_report(DetectAttention()(bb.get()))
    assert "sliding-window" in report.candidates[0].reason


def test_report_json_and_table(tmp_path):
    report = attention_report(DetectAttention()(attention_module(AttentionSpec(gqa="expand"))))
    report.save(tmp_path / "r.json")
    import json

    data = json.loads((tmp_path / "r.json").read_text())
    assert data["summary"] == "1/1 attention blocks rewritten"
    cand = data["candidates"][0]
    assert (cand["num_heads"], cand["num_kv_heads"], cand["head_dim"], cand["causal"]) == (4, 2, 16, "bottom_right")
    assert "rewritten" in report.table()


def test_composite_kv_map_for_tile():
    mod = DetectAttention()(attention_module(AttentionSpec(gqa="tile")))
    block = AttentionBlock.from_attrs(_composites(mod)["sat_attention_L0"].attrs)
    assert block.kv_map == KVMap.TILE and block.causal == CausalMode.BOTTOM_RIGHT
