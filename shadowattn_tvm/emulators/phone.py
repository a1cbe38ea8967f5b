"""The emulated phone: a TVM RPC tracker on 127.0.0.1, an aarch64 RPC server under qemu-user and
its NPU, a service running Hexagon graph libraries under qemu-hexagon (`npu_service`).

    state = start(key="snapdragon-8gen3")          # prepares the image on first use (cached)
    ... shadowattn deploy build/ --rpc-tracker 127.0.0.1:{state.tracker_port} --rpc-key {state.key}
    stop(state)                                     # or stop() with the state file

Each process runs in its own session (process group); `stop` signals those groups and nothing else,
after checking the PID still runs the command we started (PIDs get reused). The state file
(``$SHADOWATTN_PHONE_STATE``) is what lets another process (`shadowattn emulated-phone stop`) find them.
`ServerKind.HOST` starts the same pair with an x86 server (no qemu): deploy tests of host builds
and failure paths use it because it starts in a second.
"""
from __future__ import annotations

import enum
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import settings
from . import phone_image
from ..runtime.rpc_session import tracker_summary

# device side: the script the phone runs lives with the runtime, not with its stand-ins
SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "runtime" / "_rpc_server_main.py"


class PhoneError(RuntimeError):
    """The tracker or server could not be started, found or stopped."""


class ServerKind(enum.Enum):
    EMULATED = "emulated"  # aarch64 userland under qemu-aarch64: runs phone (aarch64) builds
    HOST = "host"  # this machine's Python: runs host builds; starts fast (tests of deploy itself)


@dataclass(frozen=True)
class Proc:
    pid: int
    marker: str  # the arguments we started it with: recognises it (the launcher execs qemu) before a signal
    log: str

    def alive(self) -> bool:
        try:
            cmd = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return self.marker in cmd


@dataclass(frozen=True)
class PhoneState:
    key: str
    kind: str
    host: str
    tracker_port: int
    server_port: int
    tracker: Proc
    server: Proc
    info: dict
    npu_port: int | None = None  # the NPU service (qemu-hexagon), when the phone has one
    npu: Proc | None = None

    @property
    def procs(self) -> list:
        return [p for p in (self.server, self.npu, self.tracker) if p is not None]

    @property
    def tracker_address(self) -> str:
        return f"{self.host}:{self.tracker_port}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "PhoneState":
        data = dict(data)
        data["tracker"], data["server"] = Proc(**data["tracker"]), Proc(**data["server"])
        data["npu"] = Proc(**data["npu"]) if data.get("npu") else None
        return cls(**data)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _spawn(cmd: list[str], log: Path, env: dict | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)  # own process group: stop() signals exactly it
    proc = Proc(pid=popen.pid, marker=" ".join(cmd[1:]), log=str(log))
    deadline = time.monotonic() + 10
    while not proc.alive() and popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # until the exec: before it, /proc shows our own command line
    return proc


def _tail(path: str, lines: int = 6) -> str:
    try:
        return " | ".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(what: str, ready, procs: list[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        for proc in procs:
            if not proc.alive():
                raise PhoneError(f"{what}: process {proc.pid} exited; log {proc.log}: {_tail(proc.log)}")
        time.sleep(0.5)
    raise PhoneError(f"{what}: not ready after {timeout:.0f} s; "
                     + "; ".join(f"log {p.log}: {_tail(p.log)}" for p in procs))


def _helper_env() -> dict:
    """Trackers and host servers only serve RPC: TVM's runtime library, and no torch
    (`settings.torchless_env`; TVM's PopenWorker imports TVM a second time in each)."""
    return {**settings.torchless_env(), "TVM_USE_RUNTIME_LIB": "1"}


def _qemu_version() -> str:
    out = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].replace("qemu-aarch64 version", "qemu-user").strip() if out else "qemu-user"


def start(key: str = "snapdragon-8gen3", *, kind: ServerKind | str = ServerKind.EMULATED, host: str = "127.0.0.1",
          tracker_port: int = 0, server_port: int = 0, state_file: Path | None = None,
          timeout: float = 180.0, npu: bool | None = None, log=print) -> PhoneState:
    """Start a tracker, the NPU service and one server registered under `key`; port 0 picks a free port.

    npu: start the NPU service (`npu_service`, qemu-hexagon) and give the server its address;
    None: for an emulated phone only (host servers start in a second for deploy's own tests).

    Returns when the tracker lists the server as free. Writes `state_file` (default
    ``$SHADOWATTN_PHONE_STATE``). Raises PhoneError if a phone from that state file still runs.
    """
    kind = ServerKind(kind)
    state_file = Path(state_file) if state_file is not None else settings.PHONE_STATE.get()
    old = load_state(state_file)
    if old is not None and any(p.alive() for p in old.procs):
        raise PhoneError(f"an emulated phone from {state_file} is running (tracker {old.tracker_address}, "
                         f"key {old.key!r}): stop it first (`shadowattn emulated-phone stop`)")
    for name, port in (("tracker", tracker_port), ("server", server_port)):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise PhoneError(f"the {name} port must be 0..65535 (0 = any free port), got {port!r}")
    tracker_port = tracker_port or free_port(host)
    server_port = server_port or free_port(host)
    for port in (tracker_port, server_port):
        if _port_in_use(host, port):
            raise PhoneError(f"port {host}:{port} is already in use: pick another (or 0 for a free one)")
    logs = state_file.parent / "logs"
    helper_env = _helper_env()

    if kind is ServerKind.EMULATED:
        image = phone_image.prepare(log=log)
        python, env = str(image.launcher), image.env()
        info = {"emulator": _qemu_version(), "arch": "aarch64", "kind": kind.value}
    else:
        python, env = sys.executable, helper_env
        info = {"emulator": None, "arch": os.uname().machine, "kind": kind.value}

    started = time.perf_counter()
    npu_proc, npu_port = None, None
    if npu if npu is not None else kind is ServerKind.EMULATED:
        npu_port = free_port(host)
        npu_proc = _spawn([sys.executable, "-m", "shadowattn_tvm.emulators.npu_service", "--host", host,
                           "--port", str(npu_port)], logs / f"npu-{npu_port}.log", {**os.environ})
    tracker = _spawn([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(tracker_port),
                      "--port-end", str(tracker_port + 1), "--silent"], logs / f"tracker-{tracker_port}.log",
                     helper_env)
    server = None
    try:
        # the tracker imports TVM twice (its PopenWorker too): ~4 s idle, far more on a loaded CI machine
        _wait("rpc tracker", lambda: _port_in_use(host, tracker_port), [tracker], timeout)
        if npu_proc is not None:  # the first start compiles the qemu driver (cached after)
            _wait("npu service", lambda: _port_in_use(host, npu_port), [npu_proc], max(timeout, 300))
        server = _spawn([python, str(SERVER_SCRIPT), "--host", host, "--port", str(server_port),
                         "--port-end", str(server_port + 1), "--tracker", f"{host}:{tracker_port}", "--key", key,
                         "--info", json.dumps({**info, "npu": npu_proc is not None}),
                         *(["--npu", f"{host}:{npu_port}"] if npu_proc is not None else [])],
                        logs / f"server-{server_port}.log", env)
        state = PhoneState(key=key, kind=kind.value, host=host, tracker_port=tracker_port, server_port=server_port,
                           tracker=tracker, server=server, info={**info, "npu": npu_proc is not None},
                           npu_port=npu_port, npu=npu_proc)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state.to_json(), indent=1))  # now `stop` finds them, even mid-start

        def registered() -> bool:
            try:
                return tracker_summary(host, tracker_port).get("queue_info", {}).get(key, {}).get("free", 0) > 0
            except (OSError, RuntimeError):
                return False

        _wait(f"{kind.value} rpc server (key {key!r})", registered, [tracker, server], timeout)
    except BaseException:
        for proc in (server, npu_proc, tracker):
            if proc is not None:
                _kill(proc)
        state_file.unlink(missing_ok=True)
        raise
    log(f"[phone] {kind.value} rpc server (pid {server.pid}) registered as {key!r} with tracker "
        f"{state.tracker_address} (pid {tracker.pid})"
        f"{f', NPU service {host}:{npu_port} (pid {npu_proc.pid}, qemu-hexagon)' if npu_proc else ''} "
        f"in {time.perf_counter() - started:.1f} s; state: {state_file}")
    return state


def load_state(state_file: Path | None = None) -> PhoneState | None:
    state_file = Path(state_file) if state_file is not None else settings.PHONE_STATE.get()
    try:
        return PhoneState.from_json(json.loads(state_file.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as err:
        raise PhoneError(f"{state_file} is not an emulated-phone state file ({err}); delete it") from None


def _kill(proc: Proc, grace: float = 5.0) -> bool:
    """SIGTERM the process group of `proc` (if it is still ours), then SIGKILL after `grace` s.

    The group id is the leader's PID (start_new_session); a group whose leader already died is
    still signalled, so orphaned workers go too. Returns False if nothing of it was running.
    """
    if not proc.alive() and not live_group_members(proc.pid):
        _reap(proc.pid)
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and live_group_members(proc.pid):
            _reap(proc.pid)
            time.sleep(0.1)
        if not live_group_members(proc.pid):
            break
    _reap(proc.pid)
    return True


def live_group_members(pgid: int) -> list[int]:
    """PIDs of processes still running in process group `pgid` (zombies excluded: in some sandboxes
    PID 1 never reaps orphans, so a dead group can linger as zombies)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child: collect it so it does not linger as a zombie
    except ChildProcessError:
        pass


def kill_server(state: PhoneState) -> bool:
    """Kill only the RPC server (tests use it to check that a deploy survives a dying server)."""
    return _kill(state.server, grace=0.0)


def kill_npu(state: PhoneState) -> bool:
    """Kill only the NPU service (tests: a deploy must fail cleanly when the NPU dies mid-run)."""
    return state.npu is not None and _kill(state.npu, grace=0.0)


def stop(state: PhoneState | None = None, *, state_file: Path | None = None, log=print) -> bool:
    """Stop the server and tracker of `state` (or of the state file); True if anything was running."""
    path = Path(state_file) if state_file is not None else settings.PHONE_STATE.get()
    state = state if state is not None else load_state(path)
    if state is None:
        log(f"[phone] nothing to stop: no state file {path}")
        return False
    stopped = [_kill(proc) for proc in state.procs]
    try:
        if load_state(path) == state:
            path.unlink()
    except (OSError, PhoneError):
        pass
    log(f"[phone] stopped server pid {state.server.pid}, {f'NPU service pid {state.npu.pid}, ' if state.npu else ''}"
        f"tracker pid {state.tracker.pid}" if any(stopped) else "[phone] was not running")
    return any(stopped)


def status(state_file: Path | None = None) -> dict:
    """What runs: the state, whether each process is alive, the tracker's queue for the key."""
    state = load_state(state_file)
    if state is None:
        return {"running": False}
    result = {"running": all(p.alive() for p in state.procs), "key": state.key, "kind": state.kind,
              "npu_service": None if state.npu is None else {"address": f"{state.host}:{state.npu_port}",
                                                             "pid": state.npu.pid, "alive": state.npu.alive()},
              "tracker": state.tracker_address, "tracker_pid": state.tracker.pid, "server_pid": state.server.pid,
              "tracker_alive": state.tracker.alive(), "server_alive": state.server.alive(), "info": state.info}
    if state.tracker.alive():
        try:
            result["queue"] = tracker_summary(state.host, state.tracker_port).get("queue_info", {})
        except (OSError, RuntimeError) as err:
            result["queue"] = f"tracker did not answer: {err}"
    return result
