"""SplitSparseAttention: the pilot / top-k / sparse structure, scale modes and profile checks."""
from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from shadowattn_tvm.calibrate import LayerProfile, ProfileError, SparsityProfile
from shadowattn_tvm.passes import DetectAttention, SplitSparseAttention
from shadowattn_tvm.testing import AttentionSpec, attention_module
from shadowattn_tvm.testing.forms import stacked_module

from .test_detect_attention import _calls


# ProfileError is registered with TVM's FFI (passes/pipeline.py), so it crosses a pass as itself.


def _split(spec, profile=None, **kw):
    mod = DetectAttention()(attention_module(spec))
    return SplitSparseAttention(profile or SparsityProfile.uniform(0.25), **kw)(mod)


def _funcs(mod):
    return {gv.name_hint: f for gv, f in mod.functions.items()}


def test_structure_after_split():
    mod = _split(AttentionSpec(gqa="expand"))
    assert relax.analysis.check_well_formed(mod)
    funcs = _funcs(mod)
    assert "sat_attention_L0" not in funcs, "the dense composite is dropped once split"
    pilot = funcs["sat_pilot_L0"]
    assert str(pilot.attrs["shadowattn.kind"]) == "pilot"
    assert str(pilot.attrs["shadowattn.scale_mode"]) == "dynamic"
    pilot_calls = [relax_call.args[0].name_hint for name, relax_call in _calls(pilot) if name == "relax.call_tir"]
    assert pilot_calls == ["sat_absmax", "sat_absmax1", "sat_quantize", "sat_quantize_t", "sat_pilot_qk"]
    main_calls = [name if name != "relax.call_tir" else c.args[0].name_hint for name, c in _calls(mod["main"])]
    assert main_calls.index("sat_pilot_L0") < main_calls.index("sat_topk") < main_calls.index("sat_sparse_attention")
    assert "relax.nn.softmax" not in main_calls
    # the pilot output is int32 scores; top-k output is [B, H, Sq, K] int32 with K = bound for keep 0.25
    (topk_call,) = [c for name, c in _calls(mod["main"]) if name == "relax.call_tir" and c.args[0].name_hint == "sat_topk"]
    assert [int(x) for x in topk_call.ty.shape.values] == [1, 4, 32, 16]  # max(k_min=16, ...) capped by 32
    assert all(isinstance(f, relax.Function) or f.attrs["tirx.is_scheduled"] for f in funcs.values()
               if not isinstance(f, relax.Function) and f.attrs is not None and "sat_" in str(f))


def test_static_scales_are_constants_in_the_pilot():
    profile = SparsityProfile(keep=0.25, layers=(LayerProfile((0.25,) * 4, (0.5, 0.25, 0.125, 1.0), (0.75, 2.0)),))
    pilot = _funcs(_split(AttentionSpec(), profile))["sat_pilot_L0"]
    assert str(pilot.attrs["shadowattn.scale_mode"]) == "static"
    names = [c.args[0].name_hint for name, c in _calls(pilot) if name == "relax.call_tir"]
    assert "sat_absmax" not in names
    consts = [c.args[1].fields[1] for name, c in _calls(pilot) if name == "relax.call_tir" and "quantize" in c.args[0].name_hint]
    np.testing.assert_array_equal(consts[0].value.numpy(), [0.5, 0.25, 0.125, 1.0])
    np.testing.assert_array_equal(consts[1].value.numpy(), [0.75, 2.0])


def test_kernels_are_shared_across_layers():
    mod = SplitSparseAttention(SparsityProfile.uniform(0.5))(DetectAttention()(stacked_module(2)))
    names = set(_funcs(mod))
    assert {"sat_pilot_L0", "sat_pilot_L1", "sat_topk", "sat_sparse_attention"} <= names
    assert not any(n.startswith("sat_topk") and n != "sat_topk" for n in names)


def test_static_mode_without_scales_is_a_clear_error():
    with pytest.raises(ProfileError, match="scale_mode='static' needs per-head q_scales"):
        _split(AttentionSpec(), SparsityProfile.uniform(0.2), scale_mode="static")


def test_profile_for_another_model_is_rejected():
    profile = SparsityProfile(keep=0.2, layers=(LayerProfile((0.2,) * 14),))
    with pytest.raises(ProfileError, match="4 query heads but the profile gives 14"):
        _split(AttentionSpec(), profile)


@pytest.mark.parametrize("bad", [0, -3])
def test_k_min_must_be_positive(bad):
    with pytest.raises(ValueError, match="k_min"):
        SplitSparseAttention(SparsityProfile.uniform(0.2), k_min=bad)


def test_module_without_attention_is_untouched():
    mod = attention_module(AttentionSpec())
    assert SplitSparseAttention(SparsityProfile.uniform(0.2))(mod).same_as(mod)
