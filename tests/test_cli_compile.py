import json

import pytest

from shadowattn_tvm.cli.main import main


def test_compile_default_for_host(tmp_path, capsys):
    out = tmp_path / "build"
    assert main(["compile", "--device", "host", "-o", str(out), "--tokens", "32", "--keep", "0.3", "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("built default for host") and "1/1 attention blocks rewritten" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["tokens"] == 32 and manifest["pipeline"]["keep"] == 0.3
    assert "selection" not in manifest["pipeline"]  # per head, as builds before the option


def test_group_selection_is_a_build_option_the_manifest_keeps():
    from shadowattn_tvm.builder.options import BuildOptions

    options = BuildOptions(keep=0.3, selection="group")
    assert options.to_json()["selection"] == "group" and BuildOptions.from_json(options.to_json()) == options
    assert "selection" not in BuildOptions(keep=0.3).to_json()
    with pytest.raises(ValueError, match="selection must be one of"):
        BuildOptions(keep=0.3, selection="kv")


def test_compile_for_a_phone_writes_the_adreno_opencl_kernels(tmp_path, capsys):
    from shadowattn_tvm.emulators.toolchain import ToolchainError, ensure_tools

    try:
        ensure_tools(("aarch64-gxx",), log=lambda _msg: None)
    except ToolchainError as err:
        pytest.skip(f"no aarch64 cross compiler and cannot install it: {err}")
    out = tmp_path / "build"
    assert main(["compile", "--device", "snapdragon-8gen3", "-o", str(out), "--tokens", "32", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "adreno/ (3 files" in printed and "npu/ (" in printed and "plan.json" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    sources = sorted(n for n, info in manifest["files"].items() if info["kind"] == "opencl-source")
    assert sources == ["adreno/sat_sparse_attention.cl", "adreno/sat_topk.cl"]
    assert all("__kernel void" in (out / name).read_text() for name in sources)


@pytest.mark.parametrize("argv,message", [
    (["compile", "llama-7b", "--device", "host", "-o", "X"], "unknown model 'llama-7b': pass smollm2, a .gguf file or an .onnx file"),
    (["compile", "--device", "iphone", "-o", "X"], "unknown device 'iphone'; known: host, snapdragon-8gen2"),
    (["compile", "--device", "host", "-o", "X", "--keep", "0"], "keep"),
    (["compile", "--device", "host", "-o", "X", "--tokens", "0"], "tokens must be a positive integer"),
    (["compile", "--device", "host", "-o", "X", "--profile", "/nonexistent/p.json"], "no profile file /nonexistent/p.json"),
    (["compile", "--device", "host", "-o", "X", "--capacity", "64"], "--capacity and --prompt describe a generation build"),
    (["compile", "--device", "host", "-o", "X", "--generate"], "'default' is an attention block: generation builds"),
    (["compile", "--device", "host", "-o", "X", "--generate", "--tokens", "32", "--capacity", "32"],
     "leaves no room to generate"),
])
def test_compile_rejects(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        main(argv)
    assert not (tmp_path / "X").exists()


def test_compile_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "thesis.tex").write_text("")
    with pytest.raises(SystemExit, match="refusing to replace"):
        main(["compile", "--device", "host", "-o", str(tmp_path), "--tokens", "32"])


def test_compile_applies_tune_logs_of_the_device(tmp_path, monkeypatch, capsys):
    from .tuning_helpers import fake_tune_logs

    monkeypatch.chdir(tmp_path)
    fake_tune_logs(tmp_path / "tune_logs" / "host", 32, tuned_ms=0.01, shipped_ms=1.0)
    assert main(["compile", "--device", "host", "-o", "build", "--tokens", "32"]) == 0  # found by default
    out = capsys.readouterr().out
    assert "[compile] tuning logs tune_logs/host: 1 workloads, 1 records" in out
    assert "sat_sparse_attention_te: tuned (record 0.010 ms, shipped 1.000 ms)" in out
    assert "1 of 4 tunable kernels have records, 1 scheduled from the database" in out
    assert json.loads((tmp_path / "build" / "manifest.json").read_text())["pipeline"]["tune_logs"] == "tune_logs/host"

    assert main(["compile", "--device", "host", "-o", "build", "--tokens", "32", "--no-tune-logs"]) == 0
    assert "tuning logs" not in capsys.readouterr().out
    assert "tune_logs" not in json.loads((tmp_path / "build" / "manifest.json").read_text())["pipeline"]


def test_compile_rejects_unusable_tune_logs(tmp_path):
    (tmp_path / "logs").mkdir()
    with pytest.raises(SystemExit, match=r"shadowattn compile: error: tuning logs .*logs lack database_workload.json.*"
                                         r"shadowattn tune"):
        main(["compile", "--device", "host", "-o", str(tmp_path / "build"), "--tokens", "32",
              "--tune-logs", str(tmp_path / "logs")])
    assert not (tmp_path / "build").exists()
