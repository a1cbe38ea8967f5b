"""Open a TVM RPC session directly or through a tracker, failing fast with one clear line.

TVM's own client retries a refused tracker for 60 s and blocks forever when every device of a key
is busy or none is registered; here each of those is a `RPCUnavailable` with the reason, after a
bounded wait. The tracker wire protocol (magic, then JSON messages) is TVM's, spoken directly so
every socket has a timeout.
"""
from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass

from .._compat import rpc

_TRACKER = rpc.base.TrackerCode


class RPCUnavailable(RuntimeError):
    """No session could be opened: unreachable address, unknown key, or no free device in time."""


class _Unreachable(RPCUnavailable):
    """Nothing listens at the address (the entry points add what to do about it)."""


_LOST_WORDS = ("rpc", "connection", "socket", "broken pipe", "closed", "reset")
# What to do about an unreachable endpoint, by default (`check_available`/`open_session` take another `fix`).
TRACKER_FIX = ("start the emulated phone with `shadowattn emulated-phone start`, or pass a real phone's tracker with "
               "--rpc-tracker HOST:PORT")
SERVER_FIX = ("start one there with `python -m tvm.exec.rpc_server --host 0.0.0.0 --port PORT`, or pass a running one "
              "with --rpc HOST:PORT")


def looks_lost(message: str) -> bool:
    """Whether an error message of TVM's RPC layer reads like a lost connection."""
    text = message.lower()
    return any(word in text for word in _LOST_WORDS)


@dataclass(frozen=True)
class Endpoint:
    """Where to get a device: a tracker and a key, or a server address."""

    host: str
    port: int
    key: str | None = None  # set: (host, port) is a tracker; None: it is a server

    @property
    def via_tracker(self) -> bool:
        return self.key is not None

    def describe(self) -> str:
        return (f"key {self.key!r} at tracker {self.host}:{self.port}" if self.via_tracker
                else f"rpc server {self.host}:{self.port}")


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); ValueError with the expected form otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must look like HOST:PORT (e.g. 127.0.0.1:9190), got {text!r}")
    return host, int(port)


@contextlib.contextmanager
def _unreachable_fix(endpoint: Endpoint, fix: str | None):
    """An unreachable endpoint's message gets `fix` (default `TRACKER_FIX` or `SERVER_FIX`; "" none)."""
    fix = fix if fix is not None else TRACKER_FIX if endpoint.via_tracker else SERVER_FIX
    try:
        yield
    except _Unreachable as err:
        if not fix:
            raise
        raise _Unreachable(f"{err}: {fix}") from None


def _connect(host: str, port: int, what: str, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise _Unreachable(f"cannot reach the {what} at {host}:{port} ({reason.lower()})") from None


def _tracker_socket(host: str, port: int, timeout: float) -> socket.socket:
    sock = _connect(host, port, "RPC tracker", timeout)
    try:
        sock.sendall(struct.pack("<i", rpc.base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", rpc.base.recvall(sock, 4))[0]
    except OSError as err:
        sock.close()
        reason = (err.strerror or str(err) or type(err).__name__).lower()
        raise RPCUnavailable(f"the RPC tracker at {host}:{port} dropped the connection ({reason}): check that it "
                             f"is still running and is a TVM RPC tracker") from None
    if magic != rpc.base.RPC_TRACKER_MAGIC:
        sock.close()
        raise RPCUnavailable(f"{host}:{port} is not a TVM RPC tracker")
    return sock


def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict:
    """The tracker's summary: {"server_info": [...], "queue_info": {key: {"free", "pending"}}}."""
    with _tracker_socket(host, port, timeout) as sock:
        rpc.base.sendjson(sock, [_TRACKER.SUMMARY])
        code, value = rpc.base.recvjson(sock)
    if code != _TRACKER.SUCCESS:
        raise RPCUnavailable(f"tracker {host}:{port} refused a summary: {value}")
    return value


def registered_keys(summary: dict) -> dict[str, int]:
    """key -> number of servers registered under it."""
    counts: dict[str, int] = {}
    for item in summary.get("server_info", []):
        key = item.get("key", "").split(":", 1)[-1]
        counts[key] = counts.get(key, 0) + 1
    return counts


def _wait_for_free(endpoint: Endpoint, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        summary = tracker_summary(endpoint.host, endpoint.port)
        servers = registered_keys(summary).get(endpoint.key, 0)
        free = summary.get("queue_info", {}).get(endpoint.key, {}).get("free", 0)
        if free > 0:
            return
        if servers == 0:
            keys = ", ".join(sorted(registered_keys(summary))) or "none"
            raise RPCUnavailable(f"no device with key {endpoint.key!r} is registered at tracker "
                                 f"{endpoint.host}:{endpoint.port} (registered keys: {keys})")
        if time.monotonic() >= deadline:
            raise RPCUnavailable(f"no free device for key {endpoint.key!r} at tracker {endpoint.host}:{endpoint.port}: "
                                 f"{servers} registered, all busy for {wait:.0f} s")
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def check_available(endpoint: Endpoint, *, fix: str | None = None) -> None:
    """Fail fast (RPCUnavailable) if the endpoint is unreachable or no server has the key; no waiting.

    fix: what an unreachable endpoint's message tells the user to do (default `TRACKER_FIX` or
    `SERVER_FIX`; "" for none)."""
    with _unreachable_fix(endpoint, fix):
        if not endpoint.via_tracker:
            _connect(endpoint.host, endpoint.port, "RPC server", timeout=5.0).close()
            return
        keys = registered_keys(tracker_summary(endpoint.host, endpoint.port))
    if endpoint.key not in keys:
        raise RPCUnavailable(f"no device with key {endpoint.key!r} is registered at tracker {endpoint.host}:"
                             f"{endpoint.port} (registered keys: {', '.join(sorted(keys)) or 'none'})")


def _server_session(host: str, port: int, matchkey: str, session_timeout: float):
    try:
        return rpc.connect(host, port, matchkey, session_timeout=session_timeout)
    except Exception as err:  # noqa: BLE001 - the C++ client raises plain TVM errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RPCUnavailable(f"could not open a session with rpc server {host}:{port}: {first}") from None


def open_session(endpoint: Endpoint, *, wait: float = 60.0, session_timeout: float = 0.0, fix: str | None = None):
    """An `RPCSession` on a device of `endpoint`; RPCUnavailable (one line) when there is none.

    fix: as for `check_available`."""
    with _unreachable_fix(endpoint, fix):
        if not endpoint.via_tracker:
            _connect(endpoint.host, endpoint.port, "RPC server", timeout=5.0).close()
            return _server_session(endpoint.host, endpoint.port, "", session_timeout)
        _wait_for_free(endpoint, wait)
        sock = _tracker_socket(endpoint.host, endpoint.port, timeout=max(wait, 5.0))
    with sock:
        try:
            rpc.base.sendjson(sock, [_TRACKER.REQUEST, endpoint.key, "", 1])
            code, value = rpc.base.recvjson(sock)
        except socket.timeout:
            raise RPCUnavailable(f"no free device for {endpoint.describe()} within {wait:.0f} s") from None
        except OSError as err:
            raise RPCUnavailable(f"tracker {endpoint.host}:{endpoint.port} dropped the request ({err})") from None
        if code != _TRACKER.SUCCESS:
            raise RPCUnavailable(f"tracker {endpoint.host}:{endpoint.port} refused the request: {value}")
        host, port, matchkey = value
        # The tracker reports the address the server registered with; None means "where it called from".
        return _server_session(host or endpoint.host, port, matchkey, session_timeout)
