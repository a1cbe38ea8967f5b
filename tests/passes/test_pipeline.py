"""sat.pipeline() end to end through tvm.compile: numerics, idempotency, options and errors."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi

import shadowattn_tvm as sat
from shadowattn_tvm.calibrate import LayerProfile, ProfileError, SparsityProfile
from shadowattn_tvm.npu import NPUOptions, ScaleStats
from shadowattn_tvm.npu.costs import GivenCosts
from shadowattn_tvm.testing import (AttentionSpec, attention_module, dense_reference, random_inputs,
                                    sparse_reference)

from ..conftest import run_module
from .test_detect_attention import FORMS, _ids, _softmax_module


def _tol(spec):
    return 2e-3 if spec.dtype == "float16" else 2e-5


@pytest.mark.parametrize("spec", FORMS, ids=_ids)
def test_keep_one_equals_dense(spec):
    inputs = random_inputs(spec)
    report = sat.AttentionReport()
    out = run_module(attention_module(spec), inputs, sat.pipeline(keep=1.0, report=report))
    assert report.summary() == "1/1 attention blocks rewritten"
    np.testing.assert_allclose(out.astype("float64"), dense_reference(spec, inputs), rtol=_tol(spec), atol=_tol(spec))


SPARSE_FORMS = [
    AttentionSpec(q_len=64, head_dim=32),
    AttentionSpec(q_len=48, gqa="tile", mask="padding", batch=2),
    AttentionSpec(q_len=16, kv_len=80, mask="causal_where", heads=6, kv_heads=3),
    AttentionSpec(q_len=64, dtype="float16", gqa="expand"),
    AttentionSpec(q_len=64, form="nn.attention", gqa="none", mask="none"),
    AttentionSpec(q_len=64, gqa="mqa_broadcast", mask="causal_top_left", kv_len=96),
]


@pytest.mark.parametrize("spec", SPARSE_FORMS, ids=_ids)
def test_keep_below_one_equals_numpy_reference(spec):
    inputs = random_inputs(spec, seed=3)
    out = run_module(attention_module(spec), inputs, sat.pipeline(keep=0.2, k_min=4))
    expected, _, _ = sparse_reference(spec, inputs, [0.2] * spec.heads, k_min=4)
    np.testing.assert_allclose(out.astype("float64"), expected, rtol=_tol(spec), atol=_tol(spec))
    dense = dense_reference(spec, inputs)
    assert np.abs(out - dense).max() > 10 * _tol(spec), "keep 0.2 should differ from dense on random data"


GROUP_FORMS = [
    AttentionSpec(q_len=64, head_dim=32, gqa="expand"),
    AttentionSpec(q_len=48, gqa="tile", mask="padding", batch=2, head_dim=32),
    AttentionSpec(q_len=16, kv_len=80, mask="causal_where", heads=6, kv_heads=2, head_dim=16),
]


@pytest.mark.parametrize("spec", GROUP_FORMS, ids=_ids)
def test_group_selection_equals_numpy_reference(spec):
    ratios = [0.1, 0.3, 0.2, 0.4, 0.15, 0.25][:spec.heads]
    profile = SparsityProfile(keep=0.2, layers=(LayerProfile(tuple(ratios)),))
    inputs = random_inputs(spec, seed=7)
    pipe = sat.pipeline(keep=None, profile=profile, k_min=4, selection="group", lower=False)
    ir = pipe(attention_module(spec))
    names = [gv.name_hint for gv in ir.functions]
    assert any(n.startswith("sat_topk_group") for n in names) and not any(n in ("sat_topk", "sat_topk_masked") for n in names)
    out = run_module(attention_module(spec), inputs, sat.pipeline(keep=None, profile=profile, k_min=4, selection="group"))
    expected, idx, _ = sparse_reference(spec, inputs, ratios, k_min=4, selection="group")
    assert idx.shape[1] == spec.kv_heads
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)
    per_head, _, _ = sparse_reference(spec, inputs, ratios, k_min=4)
    assert np.abs(out - per_head).max() > 1e-3, "group selection should differ from per-head selection here"


def test_unknown_selections_are_refused():
    with pytest.raises(ValueError, match="selection must be one of 'head', 'group'"):
        sat.pipeline(selection="kv")


def test_per_head_ratios_and_static_scales():
    spec = AttentionSpec(q_len=64, head_dim=32)
    ratios, qs, ks = (0.1, 0.3, 0.5, 1.0), (0.03, 0.02, 0.025, 0.04), (0.03, 0.035)
    profile = SparsityProfile(keep=0.2, layers=(LayerProfile(ratios, qs, ks),))
    inputs = random_inputs(spec, seed=5)
    out = run_module(attention_module(spec), inputs, sat.pipeline(keep=None, profile=profile, k_min=2))
    expected, idx, _ = sparse_reference(spec, inputs, ratios, k_min=2, q_scales=qs, k_scales=ks)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)
    kept = (idx >= 0).sum(-1).mean(-1)[0]
    assert kept[0] < kept[1] < kept[2] < kept[3]  # the per-head ratios reach the kernel


def test_symbolic_length_runs_at_several_lengths():
    spec = AttentionSpec(symbolic=True, mask="causal_where", gqa="expand")
    ex = tvm.compile(attention_module(spec), target="llvm", relax_pipeline=sat.pipeline(keep=0.3, k_min=2))
    for n in (5, 33, 70):
        s = AttentionSpec(q_len=n, mask="causal_where", gqa="expand")
        inputs = random_inputs(s, seed=n)
        out = run_module(ex, inputs)
        expected, _, _ = sparse_reference(s, inputs, [0.3] * 4, k_min=2)
        np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


def test_pipeline_is_idempotent():
    mod = attention_module(AttentionSpec(gqa="expand"))
    once = sat.pipeline(keep=0.2, lower=False)(mod)
    twice = sat.pipeline(keep=0.2, lower=False)(once)
    assert tvm_ffi.structural_equal(once, twice)


def test_non_attention_module_compiles_as_before():
    x = tvm.relax.Var("x", tvm.relax.TensorType((4, 8), "float32"))
    bb = tvm.relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(tvm.relax.op.nn.softmax(tvm.relax.op.multiply(x, x), axis=-1))
        bb.emit_func_output(out)
    mod = bb.get()
    data = [np.random.default_rng(0).standard_normal((4, 8)).astype("float32")]
    ours = run_module(mod, data, sat.pipeline(keep=0.2))
    np.testing.assert_array_equal(ours, run_module(mod, data, sat.lowering()))  # the pass set adds nothing
    # our CPU lowering's exp is a polynomial within 2 ulp of libm's (targets/cpu_fast_math.py)
    np.testing.assert_allclose(ours, run_module(mod, data), rtol=1e-6, atol=0)


@pytest.mark.parametrize("keep", [0, 1.5, -0.2])
def test_keep_outside_unit_interval(keep):
    with pytest.raises(ProfileError, match=r"outside \(0, 1\]"):
        sat.pipeline(keep=keep)


@pytest.mark.parametrize("keep", [True, False, "0.2", [0.2]])
def test_keep_that_is_not_a_number(keep):
    with pytest.raises(ProfileError, match="is not a number"):
        sat.pipeline(keep=keep)


@pytest.mark.parametrize("k_min", [2.5, 0, -3, True, "16", float("nan")])
def test_k_min_that_is_not_a_whole_number(k_min):
    with pytest.raises(ProfileError, match=r"k_min=.* is not a whole number >= 1"):
        sat.pipeline(keep=0.2, k_min=k_min)


def test_keep_conflicting_with_profile():
    profile = SparsityProfile(keep=0.3, layers=(LayerProfile((0.3,) * 4),))
    with pytest.raises(ProfileError, match="conflicts with the profile"):
        sat.pipeline(keep=0.2, profile=profile)


def test_strict_mode_names_the_dense_block():
    mod = _softmax_module(lambda s, q: tvm.relax.op.nn.relu(s))
    with pytest.raises(sat.UnsupportedAttentionError, match="unsupported op relax.nn.relu"):
        tvm.compile(mod, target="llvm", relax_pipeline=sat.pipeline(keep=0.2, strict=True))
    report = sat.AttentionReport()  # the default keeps it dense and says so
    tvm.compile(mod, target="llvm", relax_pipeline=sat.pipeline(keep=0.2, report=report))
    assert report.summary() == "0/1 attention blocks rewritten"


def test_dump_ir_writes_each_phase(tmp_path):
    sat.pipeline(keep=0.2, dump_ir=tmp_path, lower=False)(attention_module(AttentionSpec()))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["0_canonicalize.py", "1_detect.py", "2_split.py"]
    assert "sat_attention_L0" in (tmp_path / "1_detect.py").read_text()
    assert "sat_pilot_L0" in (tmp_path / "2_split.py").read_text()


NPU_STATS = ScaleStats(q_mean=(0.02, 0.03, 0.04, 0.05), q_std=(0.004,) * 4, k_mean=(0.06, 0.08), k_std=(0.01, 0.01))


@pytest.mark.parametrize("spec", [s for s in FORMS if not s.symbolic and s.block().num_kv_heads == 2][:4], ids=_ids)
def test_every_phase_leaves_well_formed_ir_with_the_npu_phases(spec):
    spec = AttentionSpec(**{**spec.__dict__, "q_len": 32, "head_dim": 16})
    npu = NPUOptions(kv_buckets=(16, 32), stats=NPU_STATS, costs=GivenCosts())
    mod = sat.pipeline(keep=0.25, k_min=4, npu=npu, lower=False, verify=True)(attention_module(spec))
    assert "sat_npu_block_L0" in {gv.name_hint for gv in mod.functions}
    assert tvm.relax.analysis.check_well_formed(mod)


def test_verify_names_the_phase_that_broke_the_ir(monkeypatch):
    checks = []
    monkeypatch.setattr(tvm.relax.analysis, "check_well_formed",
                        lambda mod: checks.append(len(checks)) or len(checks) < 2)  # the 2nd check fails
    with pytest.raises(RuntimeError, match=r"the IR after phase 1_detect is not well formed"):
        sat.pipeline(keep=0.2, lower=False, verify=True)(attention_module(AttentionSpec()))


def test_profile_for_another_model_raises_profile_error_through_tvm_compile():
    from shadowattn_tvm.builder.models import get_model

    profile = SparsityProfile(keep=0.2, layers=(LayerProfile((0.2,) * 3),))  # the block has 14 query heads
    with pytest.raises(ProfileError, match="layer 0 has 14 query heads but the profile gives 3 ratios"):
        tvm.compile(get_model("default", 32).mod, target="llvm", relax_pipeline=sat.pipeline(keep=None, profile=profile))


def test_profile_with_more_layers_than_the_model_is_refused_with_both_counts():
    from shadowattn_tvm.builder.models import get_model

    layer = LayerProfile((0.2,) * 14)
    profile = SparsityProfile(keep=0.2, layers=(layer, layer, layer))  # the default model has one block
    with pytest.raises(ProfileError, match="the profile covers 3 attention layers but the model has 1"):
        tvm.compile(get_model("default", 32).mod, target="llvm", relax_pipeline=sat.pipeline(keep=None, profile=profile))


def test_the_device_is_the_pipelines_input():
    from shadowattn_tvm.ir_attrs import layer_plans, npu_graphs

    spec = AttentionSpec(q_len=32, head_dim=16)
    mod = attention_module(spec)
    host = sat.pipeline(keep=0.25, k_min=4, lower=False)(mod)
    assert layer_plans(host) == [] and npu_graphs(host) == {}  # the host: the pilot stays one CPU kernel
    heads, kv_heads = spec.block().num_heads, spec.block().num_kv_heads
    profile = SparsityProfile(keep=0.25, layers=(LayerProfile((0.25,) * heads, (0.02,) * heads, (0.05,) * kv_heads,
                                                              q_scale_std=(0.004,) * heads,
                                                              k_scale_std=(0.01,) * kv_heads),))
    phone = sat.pipeline("snapdragon-8gen3", profile, keep=None, k_min=4, lower=False)(mod)
    (plan,) = layer_plans(phone)  # a device with an NPU: every pilot a planned NPU launch
    assert plan.order and "model" in plan.cost_label and npu_graphs(phone)
    with pytest.raises(ProfileError, match="needs Q/K scale statistics.*shadowattn calibrate"):  # and says how
        sat.pipeline("snapdragon-8gen3", keep=0.25, lower=False)(mod)
