"""deploy() against an x86 RPC server on this machine: verification, labels, and every failure path."""
import gc
import os
import signal

import pytest
from tvm import rpc

from shadowattn_tvm.emulators import phone
from shadowattn_tvm.runtime.deploy import LABELS, DeployError, deploy
from shadowattn_tvm.emulators.phone import free_port
from shadowattn_tvm.runtime.rpc_session import Endpoint, RPCUnavailable, open_session

pytestmark = pytest.mark.slow
quiet = dict(log=lambda _msg: None)


def _tracker(state, key=None):
    return Endpoint(state.host, state.tracker_port, key or state.key)


def test_deploy_through_tracker_verifies_and_labels(host_phone, host_build):
    result = deploy(host_build, _tracker(host_phone), repeat=2, **quiet)
    assert result.verified and result.max_abs_err <= 1e-5
    assert result.label == LABELS["host"] == "host CPU over RPC (not a phone timing)"
    assert result.server["kind"] == "host" and len(result.runs_ms) == 2 and result.median_ms > 0
    assert "verified" in result.table() and result.label in result.table()


def test_deploy_direct_to_a_stock_server(host_build):
    # A server without a tracker takes direct connections; TVM's stock server is labelled "device".
    port = free_port()
    server = rpc.Server("127.0.0.1", port, port + 1)
    try:
        result = deploy(host_build, Endpoint("127.0.0.1", port), repeat=1, **quiet)
    finally:
        server.terminate()
    assert result.verified and result.endpoint == f"rpc server 127.0.0.1:{port}"
    assert result.label == LABELS[None] == "device" and result.server == {}


def test_unreachable_tracker(host_build):
    port = free_port()
    with pytest.raises(RPCUnavailable, match=rf"^cannot reach the RPC tracker at 127.0.0.1:{port} \(connection refused\): "
                                             rf"start the emulated phone with `shadowattn emulated-phone start`, or pass "
                                             rf"a real phone's tracker with --rpc-tracker HOST:PORT \(or its RPC server "
                                             rf"with --rpc HOST:PORT\)$"):
        deploy(host_build, Endpoint("127.0.0.1", port, "any"), **quiet)


def test_unknown_key(host_phone, host_build):
    with pytest.raises(RPCUnavailable, match=r"no device with key 'pixel-9' is registered .* \(registered keys: test-host\)"):
        deploy(host_build, _tracker(host_phone, "pixel-9"), **quiet)


def test_no_free_device(host_phone, host_build):
    held = open_session(_tracker(host_phone))  # the only server is busy with this session
    try:
        with pytest.raises(RPCUnavailable, match=r"no free device for key 'test-host' .* 1 registered, all busy for 1 s"):
            deploy(host_build, _tracker(host_phone), wait=1, **quiet)
    finally:
        del held
        gc.collect()  # closes the session: the next test gets the server back


def test_wrong_architecture(host_phone, phone_build):
    with pytest.raises(DeployError, match="built for aarch64 but the server runs x86_64"):
        deploy(phone_build, _tracker(host_phone), **quiet)


def test_server_dying_mid_run_then_stop(doomed_host_phone, host_build):
    def kill_at_run(phase):
        if phase == "run":
            os.killpg(doomed_host_phone.server.pid, signal.SIGKILL)

    with pytest.raises(DeployError) as info:
        deploy(host_build, _tracker(doomed_host_phone), on_phase=kill_at_run, **quiet)
    message = str(info.value)
    assert message.startswith("the RPC server of key 'test-doomed' at tracker") and "went away during 'run'" in message
    assert "\n" not in message
    assert not doomed_host_phone.server.alive() and doomed_host_phone.tracker.alive()

    # stop() ends what is left (the tracker) and leaves no live process in either group
    assert phone.stop(doomed_host_phone, **quiet)
    for proc in (doomed_host_phone.tracker, doomed_host_phone.server):
        assert not proc.alive() and phone.live_group_members(proc.pid) == []


def test_deploy_smollm2_runs_its_real_weights(host_phone, tmp_path):
    from shadowattn_tvm.builder import compile_to_dir

    build = compile_to_dir("host", tmp_path / "smollm2", model="smollm2", tokens=16, **quiet)
    assert build.report.summary() == "30/30 attention blocks rewritten"
    result = deploy(build.out_dir, _tracker(host_phone), repeat=1, **quiet)
    assert result.verified and result.max_abs_err <= 1e-4


def test_deploy_reads_the_weights_from_the_recorded_model_file(host_phone, tmp_path):
    """A GGUF model's weights stay in its file: deploy finds it by the manifest, checks its sha256,
    and takes a new location when the file has moved."""
    import shutil

    from shadowattn_tvm.builder import ManifestError, compile_to_dir
    from shadowattn_tvm.testing import tiny_llama

    path = tiny_llama.tiny_gguf_path(tmp_path)
    build = compile_to_dir("host", tmp_path / "tiny", model=str(path), tokens=32, **quiet).out_dir
    assert deploy(build, _tracker(host_phone), repeat=1, **quiet).verified
    moved = tmp_path / "elsewhere.gguf"
    shutil.move(path, moved)
    with pytest.raises(ManifestError, match="is gone: the build takes its weights from it; pass its new location"):
        deploy(build, _tracker(host_phone), repeat=1, **quiet)
    assert deploy(build, _tracker(host_phone), repeat=1, model_file=moved, **quiet).verified
    other = tmp_path / "other.gguf"
    tiny_llama.write_tiny_gguf(other, seed=1)
    with pytest.raises(ManifestError, match="not the model file this was built from"):
        deploy(build, _tracker(host_phone), repeat=1, model_file=other, **quiet)


def test_a_generation_build_verifies_its_greedy_tokens_and_generates(host_phone, tmp_path):
    from shadowattn_tvm.builder import compile_to_dir
    from shadowattn_tvm.runtime.deploy_generation import Request
    from shadowattn_tvm.testing import tiny_llama

    path = tiny_llama.tiny_gguf_path(tmp_path)
    build = compile_to_dir("host", tmp_path / "gen", model=str(path), tokens=16, capacity=48, **quiet).out_dir
    pieces = []
    result = deploy(build, _tracker(host_phone), repeat=1, generate=Request("the cat", 6, on_text=pieces.append),
                    **quiet)
    run = result.generation
    assert result.verified and run["tokens"] == run["expected_tokens"] and len(run["tokens"]) == 8
    assert len(run["prompt"]["tokens"]) == 6 and "".join(pieces) == run["prompt"]["text"]
    assert "greedy tokens vs reference/" in result.table() and "8 of 8 equal: verified" in result.table()
    with pytest.raises(ValueError, match="prefills at most 16"):
        deploy(build, _tracker(host_phone), generate=Request("the cat sat on the mat " * 3), **quiet)


def _kill_tracker_at(state, when):
    def on_phase(phase):
        if phase == when:
            os.killpg(state.tracker.pid, signal.SIGKILL)

    return on_phase


def test_tracker_dying_before_connect(doomed_host_phone, host_build):
    # refused, or reset when the kill lands mid-handshake: one line naming the tracker either way
    with pytest.raises(RPCUnavailable, match=r"^(cannot reach the RPC tracker at 127\.0\.0\.1:\d+ \(connection refused\): "
                                             r"start the emulated phone .* --rpc HOST:PORT\)|"
                                             r"the RPC tracker at 127\.0\.0\.1:\d+ dropped the connection \(.*\): check "
                                             r"that it is still running and is a TVM RPC tracker)$"):
        deploy(host_build, _tracker(doomed_host_phone), on_phase=_kill_tracker_at(doomed_host_phone, "connect"),
               **quiet)


def test_tracker_dying_mid_run_leaves_the_session(doomed_host_phone, host_build):
    # the session goes straight to the server once the tracker has matched it: the run completes
    result = deploy(host_build, _tracker(doomed_host_phone), repeat=1,
                    on_phase=_kill_tracker_at(doomed_host_phone, "run"), **quiet)
    assert result.verified and not doomed_host_phone.tracker.alive() and doomed_host_phone.server.alive()
