"""Adreno kernels: structure and OpenCL C (fast), numerics on PoCL against numpy (emulated)."""
import numpy as np
import pytest

from shadowattn_tvm import targets
from shadowattn_tvm._compat import tirx
from shadowattn_tvm.block import AttentionBlock, CausalMode, KVMap, max_keep_count
from shadowattn_tvm.ops import reference as ref
from shadowattn_tvm.ops import topk as cpu_topk
from shadowattn_tvm.ops.sparse_attention import sparse_attention as cpu_sparse
from shadowattn_tvm.targets.adreno import schedules as adreno
from shadowattn_tvm.targets.adreno.opencl import OpenCLBuildError, build_source

GPU = targets.get("snapdragon-8gen3").gpu
K_MIN = 3


def _block(heads=4, kv_heads=2, causal=CausalMode.TOP_LEFT, kv_map=KVMap.INTERLEAVE, mask=False, dim=16):
    return AttentionBlock(layer=0, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim, causal=causal,
                          scale=dim ** -0.5, dtype="float32", kv_map=kv_map, has_mask=mask)


def _topk(block, b, sq, skv, kmax, mask_shape=None):
    shapes = {"S": (b, block.num_heads, sq, skv), "RATIO": (block.num_heads,), "IDX": (b, block.num_heads, sq, kmax)}
    if mask_shape is not None:
        shapes.update(QS=(block.num_heads,), MASK=mask_shape)
    func = adreno.specialize(adreno.topk_indices(block, K_MIN, mask_shape), shapes)
    return build_source({"sat_topk": func}, GPU)


def _sparse(block, b, sq, skv, dv, kmax, mask_shape=None):
    func = adreno.sparse_attention(block, [b, block.num_heads, sq, block.head_dim], skv, dv, kmax, mask_shape)
    return build_source({"sat_sparse_attention": func}, GPU)


# ---------------------------------------------------------------------------------------- fast
def test_kernels_bind_work_groups_and_work_items():
    block = _block()
    for func in (adreno.topk_indices(block, K_MIN), adreno.sparse_attention(block, [1, 4, 8, 16], 32, 8, 6)):
        script = func.script()
        assert "blockIdx.x" in script and "threadIdx.x" in script


def test_opencl_source_and_kernel_table():
    program = _topk(_block(), 1, 8, 40, 12)
    assert "__kernel void sat_topk_kernel(" in program.source
    assert "double" not in program.source  # Adreno has no fp64: the ratio is read as its bits
    kernel = program.kernel("sat_topk")
    assert {a.name for a in kernel.args} == {"S", "RATIO", "IDX"} and all(a.kind == "buffer" for a in kernel.args)
    assert [a.name for a in kernel.args] == sorted(a.name for a in kernel.args)  # TVM's order, named
    assert kernel.grid == (1 * 4 * 8, 1, 1) and kernel.block == (adreno.THREADS, 1, 1)
    assert program.to_json()["kernels"][0]["global_work_size"] == [32 * adreno.THREADS, 1, 1]

    sparse = _sparse(_block(mask=True), 1, 8, 40, 8, 12, (1, 1, 8, 40)).kernel("sat_sparse_attention")
    assert {a.name for a in sparse.args} == {"q", "k", "v", "idx", "mask", "out"}


def test_symbolic_shapes_become_named_scalar_arguments():
    kernel = build_source({"sat_topk": adreno.topk_indices(_block(), K_MIN)}, GPU).kernel("sat_topk")
    scalars = {a.name: a.value_of for a in kernel.args if a.kind == "scalar"}
    assert scalars == {"B": "S.shape[0]", "H": "S.shape[1]", "SQ": "S.shape[2]", "SKV": "S.shape[3]",
                       "KMAX": "IDX.shape[3]"}
    assert kernel.grid == ("B * H * SQ", 1, 1)


def test_bad_inputs_raise_clear_errors():
    func = adreno.topk_indices(_block(), K_MIN)
    with pytest.raises(OpenCLBuildError, match="needs an OpenCL target.*got kind 'llvm'"):
        build_source({"sat_topk": func}, targets.get("host").cpu)
    assert targets.get("host").gpu is None  # the CLI's writer does not apply there at all
    with pytest.raises(OpenCLBuildError, match="produced no OpenCL kernel"):
        build_source({"cpu_topk": cpu_topk.topk_indices(_block(), K_MIN)}, GPU)  # the CPU kernel
    hand_written = cpu_sparse(_block(), [1, 4, 8, 16], 32, 16, 6)
    with pytest.raises(ValueError, match="not the TE sparse-attention definition"):
        adreno.schedule_sparse_attention(hand_written)
    with pytest.raises(ValueError, match="static top_k"):
        adreno.sparse_attention(_block(), [1, 4, 8, 16], 32, 8, tirx.Var("top_k", "int64"))
    with pytest.raises(ValueError, match=r"no buffer parameters \['scores'\]"):
        adreno.specialize(func, {"scores": (1, 4, 8, 8)})


# ------------------------------------------------------------------------------ emulated (PoCL)
@pytest.fixture(scope="module")
def pocl():
    from shadowattn_tvm.emulators import opencl as opencl_emulator

    try:
        return opencl_emulator.context(log=lambda _msg: None)
    except opencl_emulator.OpenCLEmulatorError as err:
        pytest.fail(f"cannot run OpenCL on PoCL here: {err}")


def _run(ctx, program, func, inputs, outputs):
    from shadowattn_tvm.emulators import opencl as opencl_emulator

    return opencl_emulator.run(ctx, program, func, inputs, outputs)


def _scores(rng, shape, spread):
    return rng.integers(-spread, spread + 1, size=shape).astype(np.int32)  # small spread: many ties


CASES = {
    # name: block, (b, sq, skv), ratios, mask?, score spread
    "gqa_causal_ragged": (_block(), (2, 9, 70), [0.2, 0.05, 0.5, 1.0], False, 3),
    "bottom_right_tiled": (_block(kv_map=KVMap.TILE, causal=CausalMode.BOTTOM_RIGHT), (1, 6, 130),
                           [0.137, 0.3, 0.61, 0.25], False, 40),
    "no_causal_mha": (_block(heads=2, kv_heads=2, causal=CausalMode.NONE), (1, 5, 64), [0.3, 0.7], False, 1000),
    "masked_gqa": (_block(mask=True), (2, 7, 66), [0.2, 0.45, 0.05, 0.9], True, 50),
}


def _inputs(rng, block, dims, ratios, masked, spread):
    b, sq, skv = dims
    h, hkv = block.num_heads, block.num_kv_heads
    scores = _scores(rng, (b, h, sq, skv), spread)
    kmax = max_keep_count(max(ratios), skv, K_MIN)
    extra = {}
    if masked:
        mask = rng.standard_normal((b, 1, sq, skv)).astype(np.float32)
        mask[rng.random(mask.shape) < 0.25] = -1e9  # masked keys do not count as visible
        extra = {"MASK": mask, "QS": rng.uniform(0.01, 0.05, h).astype(np.float32),
                 "KS": rng.uniform(0.01, 0.05, hkv).astype(np.float32)}
    return scores, np.asarray(ratios, np.float64), kmax, extra


@pytest.mark.emulated
@pytest.mark.parametrize("case", sorted(CASES))
def test_topk_and_sparse_attention_match_numpy_on_pocl(pocl, case):
    block, dims, ratios, masked, spread = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    b, sq, skv = dims
    scores, ratio, kmax, extra = _inputs(rng, block, dims, ratios, masked, spread)
    mask = extra.get("MASK")
    mask_shape = None if mask is None else mask.shape

    program = _topk(block, b, sq, skv, kmax, mask_shape)
    idx = _run(pocl, program, "sat_topk", {"S": scores, "RATIO": ratio, **extra},
               {"IDX": ((b, block.num_heads, sq, kmax), "int32")})["IDX"]
    want = ref.topk_indices(scores, ratio, block, K_MIN, kmax, mask, extra.get("QS"), extra.get("KS"))
    np.testing.assert_array_equal(idx, want)

    dv = 24
    q = rng.standard_normal((b, block.num_heads, sq, block.head_dim)).astype(np.float32)
    k = rng.standard_normal((b, block.num_kv_heads, skv, block.head_dim)).astype(np.float32)
    v = rng.standard_normal((b, block.num_kv_heads, skv, dv)).astype(np.float32)
    inputs = {"q": q, "k": k, "v": v, "idx": idx, **({"mask": mask} if mask is not None else {})}
    out = _run(pocl, _sparse(block, b, sq, skv, dv, kmax, mask_shape), "sat_sparse_attention", inputs,
               {"out": ((b, block.num_heads, sq, dv), "float32")})["out"]
    np.testing.assert_allclose(out, ref.sparse_attention(q, k, v, idx, block, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.emulated
def test_keep_count_from_ratio_bits_matches_float64(pocl):
    """The integer ceil(ratio * Skv - 1e-9) equals block.keep_count on awkward ratios."""
    block = _block(heads=8, kv_heads=8, causal=CausalMode.NONE)
    ratios = np.array([0.2, 0.3, 0.1, 1.0, 0.7, 1 / 3, 0.000001, 0.55555], np.float64)
    for skv in (10, 15, 30, 77):
        scores = _scores(np.random.default_rng(skv), (1, 8, 2, skv), 5)
        kmax = max_keep_count(1.0, skv, 1)
        func = adreno.specialize(adreno.topk_indices(block, 1),
                                 {"S": scores.shape, "RATIO": (8,), "IDX": (1, 8, 2, kmax)})
        idx = _run(pocl, build_source({"sat_topk": func}, GPU), "sat_topk", {"S": scores, "RATIO": ratios},
                   {"IDX": ((1, 8, 2, kmax), "int32")})["IDX"]
        np.testing.assert_array_equal(idx, ref.topk_indices(scores, ratios, block, 1, kmax))
