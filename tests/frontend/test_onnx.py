"""frontend.onnx: dynamic-dim specialisation on hand-built graphs, and Hugging Face exports end to end.

The second half runs on fixtures from scripts/make_onnx_fixtures.py (tiny random-weight
transformers models, exported with dynamic batch and sequence) and needs torch + transformers.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import relax

import shadowattn_tvm as sat
from shadowattn_tvm.frontend.onnx import (bind_dims, canonicalize_attention, dynamic_dims, from_onnx, is_weight,
                                         specialize)

from ..conftest import HOST
from .conftest import fixture_script

FIXTURE_NAMES = list(fixture_script().SPECS)


# ---------------------------------------------------------------- hand-built graphs
def _positions_model(batch="batch", seq="seq") -> onnx.ModelProto:
    """embedding(ids) + position * (seq + 1): the Shape -> Squeeze -> Add -> Reshape chain that
    TVM 0.27 cannot import with a dynamic sequence ("Reshape expects ... Tensor ... PrimType")."""
    rng = np.random.default_rng(0)
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)  # noqa: E731
    inits = [c("W", rng.standard_normal((10, 4)).astype(np.float32)), c("one", np.int64(1)), c("zero", np.int64(0)),
             c("axis1", np.array([1], np.int64)), c("pos_shape", np.array([1, -1, 1], np.int64)),
             c("vec1", np.array([1], np.int64))]
    nodes = [
        helper.make_node("Gather", ["W", "ids"], ["emb"], axis=0),
        helper.make_node("Shape", ["ids"], ["shape"], start=1, end=2),
        helper.make_node("Squeeze", ["shape"], ["n"]),
        helper.make_node("Range", ["zero", "n", "one"], ["pos"]),
        helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["posf", "pos_shape"], ["posr"]),
        helper.make_node("Add", ["n", "one"], ["n1"]),
        helper.make_node("Reshape", ["n1", "vec1"], ["n1v"]),
        helper.make_node("Cast", ["n1v"], ["n1f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["posr", "n1f"], ["scaled"]),
        helper.make_node("Add", ["emb", "scaled"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "positions", [helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, seq])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, seq, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(mod, inputs, params, pipeline=None):
    ex = tvm.compile(mod, target=HOST, relax_pipeline=pipeline or sat.lowering())
    args = [tvm.runtime.tensor(np.ascontiguousarray(v)) for v in [*inputs, *params.values()]]
    return relax.VirtualMachine(ex, tvm.cpu())["main"](*args).numpy()


def test_dynamic_dims_are_listed_and_unbound_ones_explained():
    model = _positions_model()
    assert dynamic_dims(model) == {"batch": [("ids", 0)], "seq": [("ids", 1)]}
    with pytest.raises(ValueError, match=r"dynamic dimensions 'seq' \(ids axis 1\).*seq_len=<tokens>"):
        from_onnx(model)
    assert bind_dims(model, seq_len=5) == {"seq": 5, "batch": 1}
    assert bind_dims(model, dims={"seq": 7, "batch": 2}, seq_len=5) == {"seq": 7, "batch": 2}
    with pytest.raises(ValueError, match=r"\['sequence'\] are not dynamic dimensions"):
        bind_dims(model, dims={"sequence": 5})
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        bind_dims(model, seq_len=0)
    static = _positions_model(batch=1, seq=5)
    assert bind_dims(static, seq_len=5) == {}
    with pytest.raises(ValueError, match=r"seq_len=8, but the model was exported with a static length \(ids: 5"):
        from_onnx(static, seq_len=8)


def test_unnamed_dims_are_addressed_by_input_and_axis():
    model = _positions_model(seq="")
    with pytest.raises(ValueError, match=r"'ids.1' \(ids axis 1\)"):
        from_onnx(model, dims={"batch": 1})
    mod, _ = from_onnx(model, dims={"ids.1": 6})
    assert [int(d) for d in mod["main"].params[0].ty.shape.values] == [1, 6]


def test_specialised_import_matches_the_onnx_reference():
    model = _positions_model()
    ids = np.array([[3, 1, 4, 1, 5]], np.int64)
    (expected,) = ReferenceEvaluator(model).run(None, {"ids": ids})
    mod, params = from_onnx(model, seq_len=5)
    # the weight, and the folded position table (data, as in a static export); scalars and shapes stay constants
    assert sorted(params) == ["W", "scaled"] and params["scaled"].shape == (1, 5, 1)
    static = specialize(model, {"batch": 1, "seq": 5})
    assert [n.op_type for n in static.graph.node] == ["Gather", "Add"]  # everything shape-derived is folded
    assert [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim] == [1, 5]
    np.testing.assert_allclose(_run(mod, [ids], params), expected, rtol=1e-6)
    mod_const, none = from_onnx(model, seq_len=5, keep_params_in_input=False)
    assert none == {} and len(mod_const["main"].params) == 1
    np.testing.assert_allclose(_run(mod_const, [ids], {}), expected, rtol=1e-6)


def test_weights_masks_and_scales_are_told_apart():
    causal = np.triu(np.full((4, 4), np.finfo(np.float32).min, np.float32), 1)
    assert not is_weight(causal[None, None]) and not is_weight(np.float32(0.125)) and not is_weight(np.arange(3))
    assert is_weight(np.ones((4,), np.float32)) and is_weight(np.random.default_rng(0).standard_normal((3, 3)))


def test_bad_arguments():
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        from_onnx("/nonexistent/model.onnx", seq_len=4)
    with pytest.raises(TypeError, match="path or an onnx.ModelProto"):
        from_onnx(42)


# ---------------------------------------------------------------- Hugging Face exports
@pytest.fixture(scope="module", params=FIXTURE_NAMES)
def imported(request, onnx_fixtures):
    fx = onnx_fixtures[request.param]
    mod, params = from_onnx(fx.path, seq_len=fx.seq_len)
    return fx, mod, params


def test_exports_with_dynamic_dims_ask_for_seq_len(onnx_fixtures):
    fx = onnx_fixtures["llama"]
    with pytest.raises(ValueError, match=r"dynamic dimensions 'seq' \(input_ids axis 1\).*pass seq_len=<tokens>"):
        from_onnx(fx.path)


def _tol(fx):
    return dict(rtol=1e-4, atol=1e-4 * float(np.abs(fx.expected).max()))


def test_dense_build_reproduces_torch(imported):
    fx, mod, params = imported
    np.testing.assert_allclose(_run(mod, fx.inputs.values(), params), fx.expected, **_tol(fx))


def test_every_attention_block_is_rewritten_and_keep_one_is_exact(imported):
    fx, mod, params = imported
    report = sat.AttentionReport()
    out = _run(mod, fx.inputs.values(), params, sat.pipeline(keep=1.0, report=report))
    assert report.summary() == "2/2 attention blocks rewritten", report.table()
    kv_heads = 2 if fx.spec.family in ("llama", "qwen2", "qwen3", "mistral") else 4
    # BERT: its padding mask, from an input; Mistral: causal with a sliding window, a constant mask
    mask = "causal" if fx.spec.causal and fx.spec.family != "mistral" else "additive"
    for c in report.candidates:
        assert (c.num_heads, c.num_kv_heads, c.head_dim, c.mask) == (4, kv_heads, 16, mask), report.table()
        assert c.q_len == c.kv_len == str(fx.seq_len)
    np.testing.assert_allclose(out, fx.expected, **_tol(fx))


# Exporter variants (llama-sdpa, bert-legacy) differ only before detection: their sparse build is
# the one of their family, so it is not compiled again (suite time).
@pytest.mark.parametrize("imported", [n for n, s in fixture_script().SPECS.items()
                                      if s.exporter == "dynamo" and s.attn == "eager"], indirect=True)
def test_sparse_build_runs_and_stays_finite(imported):
    fx, mod, params = imported
    out = _run(mod, fx.inputs.values(), params, sat.pipeline(keep=0.2, k_min=2))  # 5 of 24 keys (window: 8)
    assert out.shape == fx.expected.shape and np.isfinite(out).all()
    assert np.abs(out - fx.expected).max() > 1e-3, "keep 0.2 with k_min 2 should not be dense"


@pytest.mark.parametrize("masked_row", [False, True], ids=["rows-visible", "row-fully-masked"])
def test_nan_guard_after_softmax_is_dropped_only_when_no_row_is_fully_masked(masked_row):
    mask = np.triu(np.full((4, 4), -np.inf, np.float32), 1)
    if masked_row:
        mask[2] = -np.inf  # softmax of that row is NaN: the guard is needed
    bb = relax.BlockBuilder()
    s = relax.Var("s", relax.TensorType([1, 2, 4, 4], "float32"))
    with bb.function("main", [s]):
        with bb.dataflow():
            p = bb.emit(relax.op.nn.softmax(relax.op.add(s, relax.const(mask)), axis=-1))
            out = bb.emit_output(relax.op.where(relax.op.isnan(p), relax.const(0.0, "float32"), p))
        bb.emit_func_output(out)
    mod = canonicalize_attention(bb.get())
    ops = [str(c.op.name) for c in _calls(mod["main"])]
    assert ("relax.isnan" in ops) == masked_row


def _calls(func):
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if isinstance(e, relax.Call) else None)
    return [c for c in found if isinstance(c.op, tvm.ir.Op)]


def test_a_length_past_the_learned_positions_is_refused():
    """positions = arange(seq) read from a 16-row table: 20 tokens would read rows that do not exist."""
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)  # noqa: E731
    rng = np.random.default_rng(0)
    inits = [c("W", rng.standard_normal((50, 4)).astype(np.float32)),
             c("P", rng.standard_normal((16, 4)).astype(np.float32)), c("one", np.int64(1)), c("zero", np.int64(0))]
    nodes = [helper.make_node("Gather", ["W", "ids"], ["emb"], axis=0),
             helper.make_node("Shape", ["ids"], ["shape"], start=1, end=2),
             helper.make_node("Squeeze", ["shape"], ["n"]),
             helper.make_node("Range", ["zero", "n", "one"], ["pos"]),
             helper.make_node("Gather", ["P", "pos"], ["pemb"], axis=0),
             helper.make_node("Add", ["emb", "pemb"], ["out"])]
    graph = helper.make_graph(nodes, "positions", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "seq", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    mod, params = from_onnx(model, seq_len=16)
    ids = np.random.default_rng(1).integers(0, 50, (1, 16))
    (expected,) = ReferenceEvaluator(model).run(None, {"ids": ids})
    np.testing.assert_allclose(_run(mod, [ids], params), expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"reads row 19 of 'P', which has 16 rows .* at most 16"):
        from_onnx(model, seq_len=20)


def test_frontend_is_reachable_from_the_package_root():
    import shadowattn_tvm as sat

    assert sat.frontend.from_onnx is from_onnx and "frontend" in sat.__all__
    with pytest.raises(AttributeError, match="has no attribute 'front_end'"):
        sat.front_end  # noqa: B018
