"""Starting the emulated phone: failures name the problem, and its RPC helpers start without torch."""
import os
import socket

import pytest

from shadowattn_tvm import settings
from shadowattn_tvm.emulators import phone


def test_a_busy_tracker_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        busy = sock.getsockname()[1]
        with pytest.raises(phone.PhoneError, match=f"port 127.0.0.1:{busy} is already in use"):
            phone.start("test-busy", kind=phone.ServerKind.HOST, tracker_port=busy,
                        state_file=tmp_path / "state.json", log=lambda _msg: None)
    assert not (tmp_path / "state.json").exists()


def test_a_process_that_never_gets_ready_is_reported_with_its_log(tmp_path):
    log = tmp_path / "tracker.log"
    log.write_text("starting\nbind to 127.0.0.1:1 failed: something the user must see\n")
    alive = phone.Proc(pid=os.getpid(), marker="", log=str(log))  # this process: alive throughout
    with pytest.raises(phone.PhoneError, match=r"rpc tracker: not ready after 1 s; log .*tracker\.log: "
                                               r"starting \| bind to .* something the user must see"):
        phone._wait("rpc tracker", lambda: False, [alive], 0.6)


def test_the_rpc_helpers_run_the_runtime_library_without_torch():
    env = phone._helper_env()
    assert env["TVM_USE_RUNTIME_LIB"] == "1" and env["PYTHONPATH"] == settings.torchless_env()["PYTHONPATH"]
