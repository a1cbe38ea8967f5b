"""Which attention blocks the Adreno lane takes: unmasked ones get OpenCL kernels, masked ones stay
on the CPU with the reason (the GPU kernel has no dense fallback for rows without a visible key),
and so do blocks with group selection (the GPU kernels select per head)."""
from shadowattn_tvm.builder.adreno import CPU_ONLY_GROUP, CPU_ONLY_MASKED, adreno_kernels
from shadowattn_tvm.calibrate.profile import SparsityProfile
from shadowattn_tvm.passes import pipeline
from shadowattn_tvm.targets import get
from shadowattn_tvm.testing.forms import AttentionSpec, attention_module

GPU = get("snapdragon-8gen3").gpu


def _lane(spec, selection="head"):
    profile = SparsityProfile.uniform(0.2)
    ir = pipeline(profile=profile, keep=None, k_min=4, lower=False, selection=selection)(attention_module(spec))
    return adreno_kernels(ir, GPU, profile, k_min=4)


def test_an_unmasked_block_gets_gpu_kernels():
    kernels, cpu_only = _lane(AttentionSpec(mask="causal_top_left"))
    assert sorted(k.name for k in kernels) == ["sat_sparse_attention", "sat_topk"] and cpu_only == {}
    assert all(k.layers == (0,) for k in kernels)


def test_a_masked_block_stays_on_the_cpu_with_the_reason():
    kernels, cpu_only = _lane(AttentionSpec(mask="padding"))
    assert kernels == [] and cpu_only == {0: CPU_ONLY_MASKED}
    assert "dense fallback" in CPU_ONLY_MASKED


def test_a_block_with_group_selection_stays_on_the_cpu_with_the_reason():
    kernels, cpu_only = _lane(AttentionSpec(mask="causal_top_left", heads=4, kv_heads=2), selection="group")
    assert kernels == [] and cpu_only == {0: CPU_ONLY_GROUP}
    kernels, cpu_only = _lane(AttentionSpec(mask="causal_top_left", heads=4, kv_heads=4), selection="group")
    assert cpu_only == {} and len(kernels) == 2  # no grouped heads: selected per head, on the GPU
