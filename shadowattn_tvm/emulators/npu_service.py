"""The emulated phone's NPU: a long-lived process running a build's Hexagon graphs under qemu-hexagon.

    python -m shadowattn_tvm.emulators.npu_service --port P      (started by `emulated_phone.start`)

It stands in for the phone's DSP behind FastRPC. Clients (`_npu_client.py` in the aarch64 RPC
server) connect over TCP on 127.0.0.1 and send requests (framing: `npu_abi.send`/`receive`):

    {"op": "load", "manifest": PATH}           an NPU manifest.json; its "library" file lies next to it
    {"op": "run", "graph": NAME, "tensors": [{"name", "dtype", "shape"}, ...]} + q, k bytes
        -> {"ok": true, "tensors": [scores]} + int32 scores bytes
    {"op": "stats"}  -> {"ok": true, "launches": N, "failed": M, "library": DIR}
    {"op": "reset"}  -> zero the counters

Every answer has "ok"; an error answers {"ok": false, "error": TEXT} and the service keeps
serving: a malformed request, an unknown graph, a wrong shape or a graph that fails on the DSP is
the caller's error. One qemu-hexagon driver (`hexagon_driver.c` in its serve mode) runs the
loaded library; if it dies it is restarted for the next request. Imports no compiler module.
"""
from __future__ import annotations

import argparse
import json
import socketserver
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..npu_abi import ServiceError, receive, send
from . import hexagon as emu

def _table(path: Path) -> dict:
    manifest = json.loads(path.read_text())
    graphs = {}
    for name, raw in manifest["graphs"].items():
        tensors = {io: tuple(SimpleNamespace(name=t["name"], shape=tuple(t["shape"]), dtype=t["dtype"]) for t in raw[io])
                   for io in ("inputs", "outputs")}
        graphs[name] = SimpleNamespace(key=name, symbol=raw["symbol"], **tensors)
    return {"path": path.parent / manifest["library"], "graphs": graphs}


class NPU:
    """The loaded library, its driver process and the counters; one request at a time."""

    def __init__(self, log=print):
        self.log, self.lock = log, threading.Lock()
        self.library = self.table = self.driver = None
        self.launches = self.failed = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="npu-service-"))
        self.toolchain = emu.ensure_toolchain(log=log)
        self.driver_exe = emu.build_driver(self.toolchain, log=log)

    def handle(self, header: dict, arrays: list) -> tuple[dict, list]:
        op = header.get("op")
        with self.lock:
            if op == "load":
                return self._load(Path(str(header.get("manifest", "")))), []
            if op == "run":
                return self._run(str(header.get("graph", "")), header.get("tensors", []), arrays)
            if op == "stats":
                return {"ok": True, "launches": self.launches, "failed": self.failed,
                        "library": None if self.library is None else str(self.library)}, []
            if op == "reset":
                self.launches = self.failed = 0
                return {"ok": True}, []
        raise ServiceError(f"unknown op {op!r}: expected load, run, stats or reset")

    def _load(self, library: Path) -> dict:
        try:
            table = _table(library)
        except (OSError, ValueError, KeyError) as err:
            raise ServiceError(f"cannot load an NPU graph library from manifest {library}: {err}") from None
        self._stop_driver()
        self.library, self.table = library, table
        self._start_driver()
        return {"ok": True, "graphs": len(table["graphs"])}

    def _start_driver(self) -> None:
        cmd = [self.toolchain.qemu, "-cpu", emu.QEMU_CPU, str(self.driver_exe), str(self.table["path"]), "-"]
        self.driver = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, bufsize=1)
        if self.driver.stdout.readline().strip() != "ready":
            raise ServiceError(f"the Hexagon driver did not start: {self.driver.stderr.read()[-1500:]}")

    def _stop_driver(self) -> None:
        if self.driver is not None:
            self.driver.kill()
            self.driver.wait()
            self.driver = None

    def _run(self, name: str, specs, arrays) -> tuple[dict, list]:
        if self.table is None:
            raise ServiceError("no NPU graph library loaded: send {'op': 'load'} first")
        entry = self.table["graphs"].get(name)
        if entry is None:
            raise ServiceError(f"graph {name!r} is not in {self.library}")
        try:
            lines, outs = emu.call_lines(entry, {s["name"]: a for s, a in zip(specs, arrays)}, self.tmp, "launch")
        except (ValueError, KeyError, TypeError) as err:
            raise ServiceError(str(err)) from None
        if self.driver is None or self.driver.poll() is not None:
            self._start_driver()  # a driver that died on an earlier request
        try:
            self.driver.stdin.write("\n".join(lines) + "\n")
            self.driver.stdin.flush()
            reply = self.driver.stdout.readline().strip()
        except OSError:
            reply = ""
        if not reply.startswith("done"):
            self.failed += 1
            detail = reply or f"the driver exited ({self.driver.poll()})"
            if self.driver.poll() is not None:
                detail += f": {self.driver.stderr.read()[-1500:].strip()}"
                self.driver = None
            raise ServiceError(f"graph {name} failed on the emulated Hexagon: {detail}")
        self.launches += 1
        scores = emu.read_outputs(outs)
        return {"ok": True, "tensors": [{"name": i.name, "dtype": str(a.dtype), "shape": list(a.shape)}
                                        for i, a in zip(entry.outputs, scores)]}, scores


def serve(port: int, host: str = "127.0.0.1", log=print) -> None:
    npu = NPU(log=log)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            while True:
                try:
                    header, arrays = receive(self.request)
                except ServiceError as err:  # its payload cannot be skipped: answer, then drop the connection
                    self._answer({"ok": False, "error": str(err)}, [])
                    return
                except (ConnectionError, OSError, ValueError):
                    return  # the client went away (or was not one of ours)
                try:
                    reply, out = npu.handle(header, arrays)
                except ServiceError as err:
                    reply, out = {"ok": False, "error": str(err)}, []
                if not self._answer(reply, out):
                    return

        def _answer(self, reply, out) -> bool:
            try:
                send(self.request, reply, out)
                return True
            except OSError:
                return False

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer((host, port), Handler) as server:
        log(f"npu service listening on {host}:{server.server_address[1]}")
        sys.stdout.flush()
        server.serve_forever()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.port, args.host, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
