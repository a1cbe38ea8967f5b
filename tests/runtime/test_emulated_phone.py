"""The emulated phone end to end: aarch64 build -> tracker -> qemu-user RPC server -> verified run.

Cost (2 shared cores): ~15-25 s to start the pair and ~2-10 s per deploy with warm caches; the
tuning test adds ~35 s, or ~100 s when it is the first MetaSchedule user of the process. The first
run on a machine also installs qemu-user and g++-aarch64-linux-gnu (apt, ~70 MB of packages) and
caches the aarch64 userland (~25-35 s, ~120 MB downloaded, ~320 MB under $SHADOWATTN_CACHE).
"""
import json

import pytest

from shadowattn_tvm.cli.main import main
from shadowattn_tvm.emulators import phone
from shadowattn_tvm.emulators.phone_image import default_image
from shadowattn_tvm.runtime.trace import validate

pytestmark = pytest.mark.emulated


def test_phone_is_registered_and_emulated(emulated_phone):
    assert emulated_phone.tracker.alive() and emulated_phone.server.alive() and emulated_phone.npu.alive()
    assert emulated_phone.info["arch"] == "aarch64" and emulated_phone.info["emulator"].startswith("qemu-user")
    assert default_image().is_ready()


def test_deploy_cli_on_the_emulated_phone(emulated_phone, phone_build, tmp_path, capsys):
    out_json = tmp_path / "deploy.json"
    code = main(["deploy", str(phone_build), "--rpc-tracker", emulated_phone.tracker_address,
                 "--repeat", "2", "--json", str(out_json)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "verified" in stdout and "emulated (qemu-user, not a phone timing)" in stdout
    result = json.loads(out_json.read_text())
    assert result["verified"] and result["label"] == "emulated (qemu-user, not a phone timing)"
    assert result["server"]["arch"] == "aarch64" and result["device"] == "snapdragon-8gen3"
    assert result["max_abs_err"] < 1e-4 and len(result["runs_ms"]) == 2
    # every pilot ran as Hexagon code in the NPU service, as many launches as the plan has
    plan = json.loads((phone_build / "plan.json").read_text())
    assert result["npu_launches"] == result["npu_planned"] == plan["launches"] == 2  # 2 KV groups, one chunk
    assert "2 executed on emulated Hexagon (qemu-hexagon), plan.json has 2: as planned" in stdout
    trace = json.loads(open(result["trace"]).read())
    assert validate(trace) == []
    graphs = [e for e in trace["traceEvents"] if e.get("cat") == "npu_graph"]
    assert sorted(e["args"]["unit"] for e in graphs) == sorted(plan["layers"][0]["order"])
    assert all(e["args"]["graph"].startswith("sat_npu_L0_") for e in graphs)
    assert "emulated" in next(e for e in trace["traceEvents"] if e["name"] == "process_name")["args"]["name"]


def test_status_reports_the_queue(emulated_phone, tmp_path):
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(emulated_phone.to_json()))
    status = phone.status(state_file)
    assert status["running"] and status["queue"]["snapdragon-8gen3"]["free"] >= 0


@pytest.mark.slow
def test_tune_through_the_tracker_on_the_emulated_phone(emulated_phone, tmp_path):
    from shadowattn_tvm.runtime.rpc_session import Endpoint
    from shadowattn_tvm.tuning.driver import tune

    endpoint = Endpoint(emulated_phone.host, emulated_phone.tracker_port, emulated_phone.key)
    result = tune("snapdragon-8gen3", tasks=("sparse_attention",), trials=2, tokens=32, work_dir=tmp_path / "8gen3",
                  endpoint=endpoint, log=lambda _msg: None)
    assert result.records == 2 and result.best_ms["sparse_attention"] > 0  # measured under qemu


def test_a_tiny_llama_compiles_and_deploys_with_the_npu_lane(emulated_phone, cross_toolchain, tmp_path, capsys):
    """A whole (tiny, random) Llama: calibrated scales, every layer's pilot on emulated Hexagon."""
    from shadowattn_tvm.builder import compile_to_dir
    from shadowattn_tvm.builder.models import source_build
    from shadowattn_tvm.calibrate.calibrate import calibrate
    from shadowattn_tvm.frontend import GGUFSource, ModelRunner
    from shadowattn_tvm.testing import tiny_llama

    path = tmp_path / "tiny.gguf"
    tiny_llama.write_tiny_gguf(path)
    runner = ModelRunner(GGUFSource(path, name="tiny-llama"))
    profile = calibrate(runner, "the cat sat on the mat and the dog ate the hat " * 8, keep=0.25, ctx=32,
                        progress=False)
    tokens = 64
    build = compile_to_dir("snapdragon-8gen3", tmp_path / "build", model=source_build(runner.source, tokens,
                           bind_weights=True), tokens=tokens, profile=profile, k_min=4, log=lambda _m: None)
    assert build.report.summary() == f"{tiny_llama.LAYERS}/{tiny_llama.LAYERS} attention blocks rewritten"
    plan = json.loads((build.out_dir / "plan.json").read_text())
    assert len(plan["layers"]) == tiny_llama.LAYERS and plan["launches"] >= tiny_llama.LAYERS
    code = main(["deploy", str(build.out_dir), "--rpc-tracker", emulated_phone.tracker_address, "--repeat", "1"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "verified" in stdout
    assert f"{plan['launches']} executed on emulated Hexagon (qemu-hexagon), plan.json has {plan['launches']}" in stdout


def test_a_generation_build_runs_prefill_on_the_npu_and_decodes(emulated_phone, cross_toolchain, tmp_path, capsys):
    """compile --generate for a phone, deploy --generate on the emulated phone: the reference prompt's
    prefill with every pilot on emulated Hexagon, greedy decode verified, then a prompt of ours."""
    from shadowattn_tvm.testing import tiny_llama

    path = tiny_llama.tiny_gguf_path(tmp_path)
    out = tmp_path / "gen"
    assert main(["compile", str(path), "--device", "snapdragon-8gen3", "--tokens", "32", "--generate", "--capacity",
                 "64", "--keep", "0.5", "--k-min", "4", "-o", str(out), "--quiet"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    capsys.readouterr()
    code = main(["deploy", str(out), "--rpc-tracker", emulated_phone.tracker_address, "--generate", "--prompt",
                 "the cat", "--max-new-tokens", "4"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "8 of 8 equal: verified" in stdout and "emulated" in stdout
    assert f"{plan['launches']} executed on emulated Hexagon (qemu-hexagon), plan.json has {plan['launches']}" in stdout
