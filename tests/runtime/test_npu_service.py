"""The emulated phone's NPU: the service under qemu-hexagon, its errors, and deploy when it dies.

Marker `emulated`: the service runs the build's Hexagon graph library under qemu-hexagon (the
driver is compiled once per machine, ~2 min the first time; cached under $SHADOWATTN_CACHE).
"""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from shadowattn_tvm.npu_abi import receive, send
from shadowattn_tvm.emulators import phone
from shadowattn_tvm.runtime.deploy import DeployError, deploy
from shadowattn_tvm.runtime.rpc_session import Endpoint

quiet = dict(log=lambda _msg: None)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    port = phone.free_port()
    log = tmp_path_factory.mktemp("npu") / "npu.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shadowattn_tvm.emulators.npu_service", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600  # the first start on a machine compiles the driver
    while time.monotonic() < deadline and not _listening(port):
        assert proc.poll() is None, log.read_text()
        time.sleep(0.5)
    yield port
    proc.kill()
    proc.wait()


def _listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ask(sock, header, arrays=()):
    send(sock, header, arrays)
    return receive(sock)


def _tensors(*arrays):
    return [{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in zip("qk", arrays)]


@pytest.mark.emulated
def test_service_runs_graphs_exactly_and_survives_malformed_launches(service, phone_build):
    manifest = phone_build / "npu" / "manifest.json"
    graphs = json.loads(manifest.read_text())["graphs"]
    name = sorted(graphs)[4]
    entry = graphs[name]
    rng = np.random.default_rng(0)
    q = rng.standard_normal(entry["inputs"][0]["shape"]).astype(np.float32)
    k = rng.standard_normal(entry["inputs"][1]["shape"]).astype(np.float32)
    with socket.create_connection(("127.0.0.1", service)) as sock:
        assert _ask(sock, {"op": "run", "graph": name})[0] == {"ok": False, "error": "no NPU graph library loaded: send "
                                                                                      "{'op': 'load'} first"}
        assert _ask(sock, {"op": "load", "manifest": str(manifest)})[0] == {"ok": True, "graphs": 9}
        assert _ask(sock, {"op": "reset"})[0]["ok"]
        bad = [({"op": "run", "graph": "nope", "tensors": []}, [], "graph 'nope' is not in"),
               ({"op": "run", "graph": name, "tensors": _tensors(q[:1])}, [q[:1]], "input q has shape (1,"),
               ({"op": "run", "graph": name, "tensors": _tensors(q)}, [q], "input 'k' missing"),
               ({"op": "launch"}, [], "unknown op 'launch'"),
               ({"op": "load", "manifest": "/nonexistent.json"}, [], "cannot load an NPU graph library")]
        for header, arrays, error in bad:
            reply, _ = _ask(sock, header, arrays)
            assert not reply["ok"] and error in reply["error"], reply
        # the same connection still runs graphs, bit-exact with numpy's INT8 Q·Kᵀ
        reply, (scores,) = _ask(sock, {"op": "run", "graph": name, "tensors": _tensors(q, k)}, [q, k])
        assert reply["ok"] and scores.dtype == np.int32
        q8 = np.clip(np.rint(q / np.asarray(entry["q_scales"], np.float32)[:, None, None]), -127, 127).astype(np.int32)
        k8 = np.clip(np.rint(k / np.float32(entry["k_scale"])), -127, 127).astype(np.int32)
        np.testing.assert_array_equal(scores, np.einsum("hid,jd->hij", q8, k8))
        assert _ask(sock, {"op": "stats"})[0]["launches"] == 1
    with socket.create_connection(("127.0.0.1", service)) as sock:  # garbage: an answer, then the connection closes
        sock.sendall(struct.pack(">I", 5) + b"{nope")
        reply, _ = receive(sock)
        assert not reply["ok"] and reply["error"].startswith("malformed request")
    with socket.create_connection(("127.0.0.1", service)) as sock:  # and the service is still up
        assert _ask(sock, {"op": "stats"})[0] == {"ok": True, "launches": 1, "failed": 0, "library": str(manifest)}


@pytest.mark.emulated
def test_deploy_fails_cleanly_when_the_npu_service_dies_mid_run(tmp_path_factory, cross_toolchain, phone_build):
    state_file = tmp_path_factory.mktemp("phone-npu-doomed") / "state.json"
    state = phone.start("test-npu-doomed", state_file=state_file, **quiet)
    try:
        def kill_npu_at_run(phase):
            if phase == "run":
                os.killpg(state.npu.pid, signal.SIGKILL)

        with pytest.raises(DeployError) as info:
            deploy(phone_build, Endpoint(state.host, state.tracker_port, state.key), on_phase=kill_npu_at_run, **quiet)
        message = str(info.value)
        assert "'run' failed" in message and "the NPU service at 127.0.0.1:" in message and "went away" in message
        assert "\n" not in message
        assert state.server.alive() and not state.npu.alive()
    finally:
        phone.stop(state, state_file=state_file, **quiet)
    assert not any(p.alive() for p in state.procs)
