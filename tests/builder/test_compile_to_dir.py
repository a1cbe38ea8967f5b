import json

import numpy as np
import pytest
import tvm
from tvm import relax

from shadowattn_tvm.builder import (DEFAULT_WRITERS, ArtifactWriter, BuildDirError, ManifestError, compile_to_dir,
                                  get_model, load_manifest, make_inputs)
from shadowattn_tvm.builder.manifest import sha256
from shadowattn_tvm.emulators.toolchain import ToolchainError, ensure_tools
from shadowattn_tvm.testing import dense_reference

TOKENS = 64
quiet = dict(log=lambda _msg: None)


def _elf_machine_field(path):
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("builds") / "host"
    return compile_to_dir("host", out, tokens=TOKENS, **quiet)


@pytest.fixture(scope="module")
def cross_toolchain():
    try:
        ensure_tools(("aarch64-gxx",), **quiet)
    except ToolchainError as err:
        pytest.skip(f"no aarch64 cross compiler and cannot install it: {err}")


def test_host_build_directory(host_build):
    out = host_build.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["cpu.so", "manifest.json", "reference", "report.json"]
    data = json.loads((out / "manifest.json").read_text())
    assert data["device"]["name"] == "host" and data["model"] == {**data["model"], "name": "default", "tokens": TOKENS}
    assert data["inputs"] == [{"name": "q", "shape": [1, TOKENS, 14, 64], "dtype": "float32"},
                              {"name": "k", "shape": [1, TOKENS, 2, 64], "dtype": "float32"},
                              {"name": "v", "shape": [1, TOKENS, 2, 64], "dtype": "float32"}]
    assert data["pipeline"] == {"keep": 0.2, "k_min": 16, "profile": None}
    assert data["report"]["rewritten"] == 1 and data["report"]["dense"] == 0
    for name, info in data["files"].items():
        assert info["sha256"] == sha256(out / name) and info["bytes"] == (out / name).stat().st_size
    assert data["files"]["cpu.so"]["kind"] == "cpu-module"
    assert _elf_machine_field(out / "cpu.so") == 0x3E  # x86-64
    assert json.loads((out / "report.json").read_text())["summary"] == "1/1 attention blocks rewritten"
    assert data["lanes"]["pilot"]["lane"] == "cpu" and "has no NPU" in data["lanes"]["pilot"]["reason"]


def test_reference_is_the_build_run_on_its_seeded_inputs(host_build):
    out = host_build.out_dir
    inputs = np.load(out / "reference" / "inputs.npz")
    assert list(inputs) == ["q", "k", "v"]
    expected = make_inputs(load_manifest(out).inputs, seed=0)
    assert all(np.array_equal(inputs[n], x) for n, x in zip("qkv", expected))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "cpu.so")), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(inputs[n]) for n in "qkv"]).numpy()
    np.testing.assert_array_equal(np.load(out / "reference" / "output.npy"), got)
    assert json.loads((out / "reference" / "reference.json").read_text())["weights"] == []



def test_a_host_builds_reference_runs_the_exported_library(tmp_path, monkeypatch):
    """Not the in-memory executable, whose first run would make LLVM generate its code again."""
    loaded = []
    load = tvm.runtime.load_module
    monkeypatch.setattr(tvm.runtime, "load_module", lambda path, *a, **k: loaded.append(path) or load(path, *a, **k))
    compile_to_dir("host", tmp_path / "host", tokens=32, **quiet)
    assert [path.rsplit("/", 1)[1] for path in loaded] == ["cpu.so"]  # in the build's staging directory


def test_host_build_runs_and_is_attention(host_build):
    manifest = load_manifest(host_build.out_dir)
    inputs = make_inputs(manifest.inputs, seed=0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(host_build.out_dir / "cpu.so")), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()
    spec = get_model("default", TOKENS).config
    from shadowattn_tvm.testing import AttentionSpec

    dense = dense_reference(AttentionSpec(**spec), inputs)
    assert out.shape == dense.shape
    assert np.linalg.norm(out - dense) / np.linalg.norm(dense) < 0.5  # sparse (keep 0.2) but attention


def test_aarch64_build_is_an_aarch64_shared_library(cross_toolchain, tmp_path):
    result = compile_to_dir("snapdragon-8gen3", tmp_path / "phone", tokens=TOKENS, **quiet)
    lib = result.out_dir / "cpu.so"
    assert _elf_machine_field(lib) == 0xB7  # EM_AARCH64
    assert lib.read_bytes()[4] == 2  # ELFCLASS64
    manifest = load_manifest(result.out_dir)
    assert manifest.device["cpu"]["mcpu"] == "cortex-a720" and manifest.rpc_key == "snapdragon-8gen3"
    kinds = {name: info["kind"] for name, info in manifest.data["files"].items()}
    assert {n for n, k in kinds.items() if k == "opencl-source"} == {"adreno/sat_topk.cl",
                                                                     "adreno/sat_sparse_attention.cl"}
    # the NPU lane: every pilot is a launch of a Hexagon graph in npu/, in plan.json's order
    assert kinds["npu/graphs_v75.so"] == "npu-library" and kinds["plan.json"] == "npu-plan"
    lib = (result.out_dir / "npu" / "graphs_v75.so").read_bytes()
    assert int.from_bytes(lib[18:20], "little") == 0xA4  # EM_QDSP6
    graphs = json.loads((result.out_dir / "npu" / "manifest.json").read_text())["graphs"]
    plan = json.loads((result.out_dir / "plan.json").read_text())
    (layer,) = plan["layers"]
    assert plan["launches"] == len(layer["order"]) == 2  # 2 KV groups x one 64-row chunk
    assert [u["key"] for u in layer["units"]] == layer["order"] and all(u["npu_ms"] > 0 for u in layer["units"])
    assert "not measured" in plan["cost_source"][0]
    assert len(graphs) == 9 and all(g["fused"] == 7 and g["kv_len"] == TOKENS for g in graphs.values())
    pilot = manifest.data["lanes"]["pilot"]
    assert pilot["lane"] == "npu" and pilot["launches"] == 2
    # its reference comes from the same NPU-phase build on the host (the graphs as host twins)
    assert np.load(result.out_dir / "reference" / "output.npy").shape == (1, TOKENS, 14, 64)


def _adreno_only(device, out):
    writers = tuple(w for w in DEFAULT_WRITERS if w.name in ("report", "adreno-opencl"))
    return compile_to_dir(device, out, tokens=TOKENS, writers=writers, **quiet)


def test_adreno_kernels_are_written_as_opencl_c(tmp_path):
    out = _adreno_only("snapdragon-8gen3", tmp_path / "gpu").out_dir
    manifest = load_manifest(out)  # checksums of the .cl files verified
    files = manifest.data["files"]
    assert {n: (i["kind"], i["lane"]) for n, i in files.items() if n.startswith("adreno/")} == {
        "adreno/sat_topk.cl": ("opencl-source", "gpu"),
        "adreno/sat_sparse_attention.cl": ("opencl-source", "gpu"),
        "adreno/kernels.json": ("opencl-kernels", "gpu")}
    table = json.loads((out / "adreno" / "kernels.json").read_text())
    assert table["target"]["kind"] == "opencl" and table["target"]["device"] == "adreno"
    assert table["cpu_only"] == []  # the default block has no mask
    heads, top_k = 14, 16  # the default model at 64 tokens, keep 0.2, k_min 16
    for name in ("sat_topk", "sat_sparse_attention"):
        entry = table["kernels"][name]
        source = (out / entry["file"]).read_text()
        (kernel,) = entry["kernels"]
        assert f"__kernel void {kernel['name']}(" in source and entry["layers"] == [0]
        assert kernel["grid"] == [heads * TOKENS, 1, 1] and kernel["block"][1:] == [1, 1]
        params = {p["name"]: p for p in entry["params"]}
        args = [a["name"] for a in kernel["args"]]  # buffers by name, no scalars
        assert args == sorted(args) and set(args) <= set(params)
        # top-k's RATIO is dead here (k_min 16 == top_k: every row keeps min(V, 16)), so it is not an argument
        assert set(params) - set(args) == ({"RATIO"} if name == "sat_topk" else set())
    assert table["kernels"]["sat_topk"]["params"][-1] == {"name": "IDX", "shape": [1, heads, TOKENS, top_k],
                                                          "dtype": "int32"}


def test_no_opencl_without_a_gpu(tmp_path):
    out = _adreno_only("host", tmp_path / "host").out_dir
    assert not (out / "adreno").exists()
    assert "opencl-source" not in {i["kind"] for i in load_manifest(out).data["files"].values()}


def _copy_of(build, tmp_path):
    import shutil

    return shutil.copytree(build.out_dir, tmp_path / "build")


def test_rebuild_replaces_the_whole_directory(host_build, tmp_path):
    out = _copy_of(host_build, tmp_path)
    (out / "stale.txt").write_text("from the old build")
    inode = out.stat().st_ino
    compile_to_dir("host", out, tokens=48, **quiet)
    assert not (out / "stale.txt").exists()
    assert load_manifest(out).data["model"]["tokens"] == 48
    assert out.stat().st_ino != inode  # a new directory was swapped in, not the old one edited
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]  # no temporaries left behind


def test_failed_rebuild_keeps_the_old_build(host_build, tmp_path):
    out = _copy_of(host_build, tmp_path)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def explode(ctx):
        raise RuntimeError("writer failed")

    writers = (ArtifactWriter("boom", None, explode),) + DEFAULT_WRITERS
    with pytest.raises(RuntimeError, match="writer failed"):
        compile_to_dir("host", out, tokens=48, writers=writers, **quiet)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_refuses_to_replace_a_directory_that_is_not_a_build(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BuildDirError, match="not empty and has no manifest.json"):
        compile_to_dir("host", tmp_path, tokens=32, **quiet)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unknown_model_and_device():
    with pytest.raises(ValueError, match="unknown model 'qwen9': pass smollm2, a .gguf file or an .onnx file"):
        compile_to_dir("host", "/nonexistent/x", model="qwen9", tokens=32, **quiet)
    with pytest.raises(ValueError, match="unknown device 'pixel'"):
        compile_to_dir("pixel", "/nonexistent/x", tokens=32, **quiet)


def test_manifest_detects_modified_files(host_build, tmp_path):
    copy = _copy_of(host_build, tmp_path)
    with open(copy / "cpu.so", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="cpu.so does not match its sha256"):
        load_manifest(copy)
    (copy / "cpu.so").unlink()
    with pytest.raises(ManifestError, match="cpu.so is listed in the manifest but missing"):
        load_manifest(copy)
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
