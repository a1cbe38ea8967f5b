"""Hexagon NPU graph library: the HVX graph form, its schedule, v73/v75 builds, and exact results
under qemu-hexagon (marker `emulated`; installs qemu-user, lld and ziglang on first use).

The build grid is a 3x3 (λQ, λK) bucket grid (cells at (1 + σ/2 · step) x each Q head's and the
one K head's centre scale, σ = 0.5, step -1/0/1) for each of two shapes (head_dim 64): fused 1 x 16 query rows x 128
keys, and fused 2 x 6 rows x 72 keys (2-row blocks, a partial 32-key block); plus four odd graphs
for the schedule's edge cases (single-row blocks, head_dim not a multiple of 4, one key, float16
inputs). 22 graphs per arch; objects are cached under SHADOWATTN_CACHE, so a warm run rebuilds
nothing (cold: ~1 s of codegen per graph).
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import pytest
import tvm

from shadowattn_tvm._compat import s_tir
from shadowattn_tvm.ops import reference
from shadowattn_tvm.ops.npu_graph import bucket_graph, bucket_graph_hvx, bucket_params, hvx_variant
from shadowattn_tvm.targets.hexagon.schedules import rows_per_block, schedule_bucket_graph
from shadowattn_tvm.targets.hexagon import library as hx

from ..conftest import build_prim

HEAD_DIM = 64
SHAPES = ((1, 16, 128), (2, 6, 72))  # (fused, q_chunk, kv_len)
# (fused, q_chunk, kv_len, head_dim, dtype): single-row blocks, head_dim % 4 != 0, one key, fp16 in
ODD_SHAPES = ((1, 5, 40, 10, "float32"), (3, 7, 33, 3, "float32"), (1, 1, 1, 1, "float32"), (2, 8, 64, 64, "float16"))
SIGMA = 0.5
STEPS = (-1, 0, 1)
ARCHS = ("v73", "v75")


def _scales(center, fused, step):
    return [center * (1.0 + 0.1 * h) * (1.0 + SIGMA * step * 0.5) for h in range(fused)]


def grid_graphs() -> dict:
    graphs = {}
    for fused, q_chunk, kv_len in SHAPES:
        for a in STEPS:
            for b in STEPS:
                key = f"test_f{fused}_q{q_chunk}_kv{kv_len}_c{(a + 1) * 3 + b + 1}"
                graphs[key] = bucket_graph(fused, q_chunk, kv_len, HEAD_DIM, _scales(0.02, fused, a),
                                           _scales(0.03, 1, b)[0])
    return graphs


def library_graphs() -> dict:
    graphs = grid_graphs()
    for fused, q_chunk, kv_len, head_dim, dtype in ODD_SHAPES:
        graphs[f"test_odd_f{fused}_q{q_chunk}_kv{kv_len}_d{head_dim}_{dtype}"] = bucket_graph(
            fused, q_chunk, kv_len, head_dim, _scales(0.02, fused, 0), _scales(0.03, 1, 1)[0], dtype)
    return graphs


def expected_scores(q, k, q_scales, k_scale):
    """numpy reference: ops.reference.quantize of each fused Q head and of the one K head, then
    every head's int32 Q·Kᵀ against that K."""
    q8 = reference.quantize(q[None], np.asarray(q_scales, np.float32))[0].astype(np.int32)
    k8 = reference.quantize(k[None, None], np.asarray([k_scale], np.float32))[0, 0].astype(np.int32)
    return np.einsum("hid,jd->hij", q8, k8)


def random_inputs(rng, fused, q_chunk, kv_len, head_dim, q_scales, k_scale, dtype="float32"):
    """Values spanning the int8 range and beyond it (clipping): |x / scale| up to ~250."""
    q = rng.standard_normal((fused, q_chunk, head_dim)) * np.asarray(q_scales)[:, None, None] * 60
    k = rng.standard_normal((kv_len, head_dim)) * k_scale * 60
    q, k = q.astype(dtype), k.astype(dtype)
    return q, k


def _run_host(func, q, k):
    out = tvm.runtime.empty((q.shape[0], q.shape[1], k.shape[0]), "int32", tvm.cpu())
    build_prim(func)(tvm.runtime.tensor(q), tvm.runtime.tensor(k), out)
    return out.numpy()


# ---- the HVX graph form: same numbers as bucket_graph (host build, no Hexagon) -----------------

@pytest.mark.parametrize("fused,q_chunk,kv_len,head_dim", [(2, 16, 64, 64), (1, 5, 40, 10), (2, 6, 72, 64)])
def test_hvx_graph_matches_bucket_graph_and_numpy(rng, fused, q_chunk, kv_len, head_dim):
    qs, ks = [0.02, 0.031][:fused], 0.027
    q, k = random_inputs(rng, fused, q_chunk, kv_len, head_dim, qs, ks)
    want = expected_scores(q, k, qs, ks)
    np.testing.assert_array_equal(_run_host(bucket_graph_hvx(fused, q_chunk, kv_len, head_dim, qs, ks), q, k), want)
    np.testing.assert_array_equal(_run_host(bucket_graph(fused, q_chunk, kv_len, head_dim, qs, ks), q, k), want)


def test_hvx_rounding_is_numpy_rint_with_clipping():
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -127.5, 128.0, 300.0, -1e30, np.inf,
                       -np.inf, 0.49999997, 3.0000002, -0.0, 1e-30], np.float32)
    q = np.zeros((1, 1, 32), np.float32)
    q[0, 0, :len(values)] = values * np.float32(0.25)  # scale 0.25: q / s is exact, ties stay ties
    k = np.eye(32, dtype=np.float32) * np.float32(0.125)  # k8 = identity
    got = _run_host(bucket_graph_hvx(1, 1, 32, 32, [0.25], 0.125), q, k)
    np.testing.assert_array_equal(got[0, 0], np.clip(np.rint(q[0, 0] / np.float32(0.25)), -127, 127).astype(np.int32))


def test_bucket_params_survive_both_forms():
    func = bucket_graph(2, 8, 64, 64, [0.1, 0.2], 0.3)
    params = bucket_params(func)
    assert params == {"fused": 2, "q_chunk": 8, "kv_len": 64, "head_dim": 64, "q_scales": [0.1, 0.2],
                      "k_scale": 0.3, "dtype": "float32"}
    assert bucket_params(hvx_variant(func)) == params
    assert bucket_params(schedule_bucket_graph(func)) == params
    with pytest.raises(ValueError, match="not a bucket graph"):
        bucket_params(func.without_attr("shadowattn.bucket"))


# ---- the schedule --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 6, 72, 64), (1, 5, 40, 10), (3, 7, 33, 3), (1, 1, 1, 1), (2, 4, 256, 128)])
def test_schedule_puts_the_qk_update_on_vrmpy(shape):
    fused = shape[0]
    func = schedule_bucket_graph(bucket_graph(*shape, [0.1] * fused, 0.3))
    script = func.script()
    assert script.count("llvm.hexagon.V6.vrmpybus.acc.128B") == 1
    assert 'T.sblock("acc_update")' not in script  # the scalar update block was replaced
    sch = s_tir.Schedule(func)
    assert len(sch.get_loops(sch.get_sblock("k_u8"))) == 1  # K packed once, in one flat loop outside the heads


def test_rows_per_block():
    assert [rows_per_block(n) for n in (16, 6, 5)] == [4, 2, 1]


# ---- builds for v73 and v75 -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    try:
        hx.find_linker()  # installs Debian's lld when missing and we are root
    except hx.HexagonBuildError as err:
        if os.geteuid() == 0:
            raise
        pytest.skip(f"no ld.lld and no root to install it: {err}")
    graphs = library_graphs()
    return {arch: hx.build_graph_library(graphs, arch, tmp_path_factory.mktemp(f"npu-{arch}")) for arch in ARCHS}


_HVX_FLOAT = re.compile(r"\bv\d+(:\d+)?\.(qf16|qf32|sf|hf)\b")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_grid_graph_builds_with_hvx_mac_in_its_qk_loop(libraries, arch):
    lib = libraries[arch]
    assert set(lib.graphs) == set(library_graphs())
    assert lib.library_path.exists()
    exported = hx.dynamic_symbols(lib.library_path)
    grid = grid_graphs()
    for key, entry in lib.graphs.items():
        asm = lib.assembly(key)
        compute = hx.asm_function(asm, f"{entry.function}_compute_")
        assert re.search(r"v\d+\.w \+= vrmpy\(v\d+\.ub,r\d+\.b\)", compute), key
        if key in grid:  # every (row, 4-dim slice) of a key block is one vrmpy, inside the loop nest
            assert entry.hvx_loop_macs >= HEAD_DIM // 4, (key, entry.hvx_loop_macs)
        assert not _HVX_FLOAT.search(asm), f"{key}: HVX float in the assembly"
        assert entry.symbol in exported
        assert 4_000 < entry.code_bytes < 100_000 and entry.object_bytes < 100_000, (key, entry)


@pytest.mark.parametrize("arch", ARCHS)
def test_library_is_one_hexagon_shared_object_for_its_arch(libraries, arch):
    lib = libraries[arch]
    data = lib.library_path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 1  # ELF32
    assert int.from_bytes(data[16:18], "little") == 3  # ET_DYN
    assert int.from_bytes(data[18:20], "little") == 0xA4  # EM_QDSP6 (Hexagon)
    assert int.from_bytes(data[36:40], "little") == int(arch[1:], 16)  # e_flags: 0x73 / 0x75
    assert hx.load_graph_library(lib.manifest_path) == lib
    # what the on-device runtime (and the qemu driver) must provide: TVM's error hook and libc
    assert set(lib.imports) <= {"TVMFFIErrorSetRaisedFromCStrParts", "memset", "memcpy", "memmove"}


def test_calls_reach_across_a_whole_model_library(libraries, monkeypatch):
    """Direct calls (R_HEX_B22_PCREL, +-8 MiB) to TVM's error hook and to each graph's own entry
    made ld.lld fail on SmolLM2's 270-graph library; every graph is built with long calls."""
    for arch in ARCHS:
        lib = libraries[arch]
        for entry in lib.graphs.values():
            assert hx.short_calls((lib.directory / entry.object).read_bytes()) == [], (arch, entry.key)
    # the check sees short calls where they exist: the same graph built without long calls
    with_long_calls = hx.hexagon_target

    def without_long_calls(arch):
        config = dict(with_long_calls(arch).export())
        config.pop("tag", None)
        config["keys"], config["mattr"] = list(config["keys"]), [m for m in config["mattr"] if m != "+long-calls"]
        return tvm.target.Target(config)

    monkeypatch.setattr(hx, "hexagon_target", without_long_calls)
    obj, _asm, _cached = hx.compile_graph(next(iter(library_graphs().values())), "short", hx.HexagonOptions(cache=False))
    assert "TVMFFIErrorSetRaisedFromCStrParts" in hx.short_calls(obj)


def test_manifest_lists_symbols_shapes_dtypes_scales_and_sizes(libraries):
    lib = libraries["v75"]
    entry = lib.graphs["test_f2_q6_kv72_c4"]
    assert entry.symbol == "__tvm_ffi_test_f2_q6_kv72_c4"
    assert [(t.name, t.shape, t.dtype) for t in entry.inputs + entry.outputs] == [
        ("q", (2, 6, 64), "float32"), ("k", (72, 64), "float32"), ("scores", (2, 6, 72), "int32")]
    params = bucket_params(grid_graphs()["test_f2_q6_kv72_c4"])
    assert entry.q_scales == tuple(params["q_scales"]) and entry.k_scale == params["k_scale"]
    assert (lib.directory / entry.object).stat().st_size == entry.object_bytes
    data = lib.to_json()
    assert data["arch"] == "v75" and data["library"] == "graphs_v75.so" and "-hvx-qfloat" in data["target"]["mattr"]


def test_build_rejects_bad_requests(tmp_path):
    func = bucket_graph(1, 4, 32, 64, [0.1], 0.1)
    with pytest.raises(ValueError, match="same symbol"):
        hx.build_graph_library({"a-b": func, "a_b": func}, "v75", tmp_path)
    with pytest.raises(ValueError, match="unsupported Hexagon arch"):
        hx.build_graph_library({"a": func}, "v69", tmp_path)
    with pytest.raises(ValueError, match="no graphs"):
        hx.build_graph_library({}, "v73", tmp_path)
    assert hx.arch_of(hx.hexagon_target("v73")) is hx.HexagonArch.V73


# ---- exact results under qemu-hexagon ---------------------------------------------------------------

@pytest.fixture(scope="module")
def toolchain():
    from shadowattn_tvm.emulators import hexagon as emu

    try:
        return emu.ensure_toolchain(log=lambda _msg: None)
    except emu.EmulatorError as err:
        if os.geteuid() == 0:
            raise  # we could have installed it: a real failure
        pytest.skip(f"cannot install the Hexagon emulation toolchain without root: {err}")


@pytest.mark.emulated
@pytest.mark.parametrize("arch", ARCHS)
def test_every_graph_runs_exactly_under_qemu_hexagon(libraries, toolchain, arch):
    from shadowattn_tvm.emulators.hexagon import run_graphs

    lib, rng = libraries[arch], np.random.default_rng(7)
    inputs, want = {}, {}
    for key, e in lib.graphs.items():
        q, k = random_inputs(rng, e.fused, e.q_chunk, e.kv_len, e.head_dim, e.q_scales, e.k_scale, e.dtype)
        ties = (np.array([0.5, 1.5, -2.5, 3.5]) * e.q_scales[0]).astype(e.dtype)  # .5 ties where exact
        flat = q.reshape(-1)
        flat[:min(4, flat.size)] = ties[:flat.size]
        inputs[key], want[key] = {"q": q, "k": k}, expected_scores(q, k, e.q_scales, e.k_scale)
    got = run_graphs(lib, inputs, toolchain=toolchain, log=lambda _msg: None)
    for key in lib.graphs:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{arch} {key}")


@pytest.mark.emulated
def test_a_graph_argument_error_surfaces_from_the_device_code(libraries, toolchain):
    from shadowattn_tvm.emulators.hexagon import EmulatorError, run_calls

    lib = libraries["v73"]
    key = "test_f1_q16_kv128_c4"
    wrong = dataclasses.replace(lib.graphs[key], inputs=(hx.TensorInfo("q", (1, 8, 64), "float32"),
                                                         lib.graphs[key].inputs[1]))
    lying = dataclasses.replace(lib, graphs={key: wrong})  # the manifest lies; the graph checks shapes
    q, k = np.zeros((1, 8, 64), np.float32), np.zeros((128, 64), np.float32)
    with pytest.raises(EmulatorError, match=r"q\.shape\[1\]"):
        run_calls(lying, [(key, {"q": q, "k": k})], toolchain=toolchain, log=lambda _msg: None)
