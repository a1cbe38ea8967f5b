import socket

import pytest

from shadowattn_tvm.emulators.phone import free_port
from shadowattn_tvm.runtime.rpc_session import (SERVER_FIX, TRACKER_FIX, Endpoint, RPCUnavailable, check_available,
                                                open_session, parse_address)


@pytest.mark.parametrize("text,expected", [("127.0.0.1:9190", ("127.0.0.1", 9190)), ("phone.lan:1", ("phone.lan", 1))])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9190", "host:", ":9190", "host:port", "host:70000"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text, "--rpc-tracker")


@pytest.mark.parametrize("key,what", [("phone", "RPC tracker"), (None, "RPC server")])
def test_closed_port_fails_fast_with_one_line_and_the_fix(key, what):
    port = free_port()  # nothing listens there
    fix = TRACKER_FIX if key else SERVER_FIX
    for call in (lambda e, **kw: check_available(e, **kw), lambda e, **kw: open_session(e, wait=1, **kw)):
        with pytest.raises(RPCUnavailable) as info:
            call(Endpoint("127.0.0.1", port, key))
        assert str(info.value) == f"cannot reach the {what} at 127.0.0.1:{port} (connection refused): {fix}"
        with pytest.raises(RPCUnavailable) as info:
            call(Endpoint("127.0.0.1", port, key), fix="")
        assert str(info.value) == f"cannot reach the {what} at 127.0.0.1:{port} (connection refused)"
    assert TRACKER_FIX == ("start the emulated phone with `shadowattn emulated-phone start`, or pass a real phone's "
                           "tracker with --rpc-tracker HOST:PORT")
    assert SERVER_FIX.endswith("or pass a running one with --rpc HOST:PORT")


def test_something_that_is_not_a_tracker():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(RPCUnavailable, match="dropped the connection .*is a TVM RPC tracker|is not a TVM RPC tracker"):
            import threading

            def answer():
                conn, _ = listener.accept()
                conn.sendall(b"HTTP")
                conn.close()

            threading.Thread(target=answer, daemon=True).start()
            check_available(Endpoint("127.0.0.1", port, "phone"))
