"""Deploy a build directory to a device over TVM RPC: upload, run, verify against the host, time.

    result = deploy("build/", Endpoint("127.0.0.1", 9190, key="snapdragon-8gen3"))
    print(result.table())

The prefill runs on the device with the model's real weights (when it has them) and deterministic
data inputs made from its input shapes
(seed 0 unless told); the same model is compiled for this host with the same options and run on the
same inputs, and the outputs must agree. Latency comes from the device's own ``time_evaluator``.

Timings are labelled by asking the server what it is: servers started by `emulated_phone` answer
``shadowattn.rpc_server.info`` (qemu-user or host), so their numbers are never mistaken for a
phone's; a stock TVM server on a phone has no such function and is labelled "device".
"""
from __future__ import annotations

import functools
import gc
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._compat import relax, tvm
from ..builder import BuildOptions, compile_model, get_model, load_manifest
from ..builder.models import model_inputs
from ..targets import get as get_device
from ..targets.export import elf_machine
from ._rpc_server_main import INFO_FUNCTION
from .rpc_session import Endpoint, RPCUnavailable, check_available, looks_lost, open_session

LABELS = {
    "emulated": "emulated (qemu-user, not a phone timing)",
    "host": "host CPU over RPC (not a phone timing)",
    None: "device",
}


class DeployError(RuntimeError):
    """The deploy failed after a session was opened (server died, module would not load, ...)."""


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-4


@dataclass(frozen=True)
class DeployResult:
    build: str
    device: str
    endpoint: str
    server: dict
    label: str
    verified: bool
    max_abs_err: float
    tolerance: Tolerance
    mean_ms: float
    median_ms: float
    runs_ms: list
    number: int
    repeat: int
    phases_s: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [
            ("build / device", f"{self.build} / {self.device}"),
            ("server", f"{self.endpoint} ({self.server.get('arch', '?')}"
                       f"{', ' + self.server['emulator'] if self.server.get('emulator') else ''})"),
            ("output vs host build (max abs)", f"{self.max_abs_err:.2e} (atol {self.tolerance.atol:g}, "
                                               f"rtol {self.tolerance.rtol:g}): "
                                               f"{'verified' if self.verified else 'MISMATCH'}"),
            (f"prefill latency [{self.label}]", f"{self.median_ms:.2f} ms median, {self.mean_ms:.2f} ms mean "
                                                f"({self.repeat} x {self.number} runs)"),
            ("phases", ", ".join(f"{k} {v:.1f} s" for k, v in self.phases_s.items())),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@functools.lru_cache(maxsize=4)
def _host_executable(model: str, tokens: int, options_json: str):
    """The host build a deploy compares against (cached: deploying one build twice compiles it once)."""
    built = get_model(model, tokens)
    return built, compile_model(built.mod, get_device("host").cpu, BuildOptions.from_json(json.loads(options_json)))


def _host_reference(manifest, seed: int) -> tuple[list, np.ndarray]:
    """(the run's inputs, the host build's output on them)."""
    model = manifest.data["model"]
    built, executable = _host_executable(model["name"], int(model["tokens"]),
                                         json.dumps(manifest.data["pipeline"], sort_keys=True))
    inputs = model_inputs(built, seed)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm[manifest.data.get("entry", "main")](*[tvm.runtime.tensor(x, tvm.cpu()) for x in inputs]).numpy()
    return inputs, out


def _server_info(session) -> dict:
    try:
        return json.loads(session.get_function(INFO_FUNCTION)())
    except Exception:  # noqa: BLE001 - a stock server has no such function: a real device
        return {}


def _phase_runner(endpoint: Endpoint, phases: dict, on_phase):
    def timed(name: str, fn):
        if on_phase is not None:
            on_phase(name)
        start = time.perf_counter()
        message = None
        try:
            return fn()
        except (RPCUnavailable, DeployError):
            raise
        except Exception as err:  # noqa: BLE001 - TVM raises its own error types for RPC failures
            message = _explain(name, endpoint, err)
        finally:
            phases[name] = time.perf_counter() - start
        raise DeployError(message)  # outside the handler: no traceback into frames holding remote objects

    return timed


def _on_device(session, timed, cpu_module: Path, remote_name: str, entry: str, inputs, number: int, repeat: int):
    """Everything that touches remote objects; they all die with this frame (closing the session)."""
    info = timed("query", lambda: _server_info(session))
    built_for = elf_machine(cpu_module)
    if info.get("arch") and info["arch"] != built_for:
        raise DeployError(f"{cpu_module} is built for {built_for} but the server runs {info['arch']}: "
                          f"compile for the matching --device")
    timed("upload", lambda: session.upload(str(cpu_module), remote_name))
    dev = session.cpu()
    vm = timed("load", lambda: relax.VirtualMachine(session.load_module(remote_name), dev))
    args = timed("inputs", lambda: [tvm.runtime.tensor(x, dev) for x in inputs])
    output = timed("run", lambda: vm[entry](*args).numpy())
    evaluator = timed("time", lambda: vm.time_evaluator(entry, dev, number=number, repeat=repeat)(*args))
    return info, output, [float(r) * 1e3 for r in evaluator.results], float(evaluator.mean) * 1e3


def deploy(build_dir: str | Path, endpoint: Endpoint, *, seed: int = 0, number: int = 1, repeat: int = 3,
           wait: float = 60.0, tolerance: Tolerance = Tolerance(),
           on_phase: Callable[[str], None] | None = None, log=print) -> DeployResult:
    """Run the build in `build_dir` on a device of `endpoint`; see the module docstring.

    Raises ManifestError (bad build), RPCUnavailable (no session: tracker/server unreachable, key
    unknown, no free device within `wait` s) or DeployError (the session failed mid-way).
    `on_phase(name)` is called before each phase (progress; tests use it to kill the server).
    The session is closed before returning or raising, so the device is free again at once.
    """
    manifest = load_manifest(build_dir)
    cpu_module = manifest.file_of_kind("cpu-module")
    entry = manifest.data.get("entry", "main")
    phases: dict[str, float] = {}
    timed = _phase_runner(endpoint, phases, on_phase)

    timed("check", lambda: check_available(endpoint))  # before the host compile: fail fast
    log(f"[deploy] host reference: compiling {manifest.data['model']['name']} for this machine")
    inputs, expected = timed("reference", lambda: _host_reference(manifest, seed))
    log(f"[deploy] running {entry} on {endpoint.describe()}")
    session = timed("connect", lambda: open_session(endpoint, wait=wait))
    error = None
    try:
        info, output, runs_ms, mean_ms = _on_device(session, timed, cpu_module,
                                                    f"shadowattn_{manifest.data['device']['name']}_{cpu_module.name}",
                                                    entry, inputs, number, repeat)
    except DeployError as err:
        error = DeployError(str(err))  # a fresh error: the original's traceback pins the session
    finally:
        del session
        gc.collect()  # RPC sessions close when their last reference dies; TVM objects can sit in cycles
    if error is not None:
        raise error
    close = output.shape == expected.shape
    err = float(np.max(np.abs(output.astype(np.float64) - expected))) if close else float("inf")
    verified = close and bool(np.allclose(output, expected, atol=tolerance.atol, rtol=tolerance.rtol))
    return DeployResult(
        build=str(manifest.root), device=manifest.data["device"]["name"], endpoint=endpoint.describe(),
        server=info, label=LABELS.get(info.get("kind"), LABELS[None]), verified=verified, max_abs_err=err,
        tolerance=tolerance, mean_ms=mean_ms, median_ms=float(np.median(runs_ms)), runs_ms=runs_ms,
        number=number, repeat=repeat, phases_s={k: round(v, 3) for k, v in phases.items()},
    )


def _explain(phase: str, endpoint: Endpoint, err: Exception) -> str:
    text = " ".join(str(err).split())
    head = (f"the RPC server of {endpoint.describe()} went away during {phase!r}" if looks_lost(text)
            else f"{phase!r} failed on {endpoint.describe()}")
    return f"{head}: {text[:300]}"
