"""Deploy a build directory to a device over TVM RPC: upload, run, verify against its reference, time.

    result = deploy("build/", Endpoint("127.0.0.1", 9190, key="snapdragon-8gen3"))
    print(result.table())

The prefill runs on the device on the build's own reference inputs (``reference/``, written by
compile: seeded data inputs, plus the model's real weights when it has them) and must match the
host output stored next to them. Latency comes from the device's own ``time_evaluator``.

When the build's pilot runs on the NPU (``manifest.lanes.pilot``), ``npu/`` is uploaded too and
the server's NPU runtime (`npu_abi`; on the emulated phone `_npu_client.py` backed by the NPU
service under qemu-hexagon) loads it; the verified run's NPU launches are counted (they must
equal ``plan.json``'s) and written as a Chrome trace.

Timings are labelled by asking the server what it is: servers started by `emulated_phone` answer
``shadowattn.rpc_server.info`` (qemu-user or host), so their numbers are never mistaken for a
phone's; a stock TVM server on a phone has no such function and is labelled "device".
This module imports no compiler module (no passes, kernels or model frontends): a build that
takes its weights as inputs names the model file, its sha256 and which tensor feeds each input
(`weights.WeightMap`, numpy and the format's reader only); ``model_file`` points at the file
when it has moved since the build.
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._compat import relax, tvm
from ..builder.manifest import DERIVED_WEIGHTS, ManifestError, load as load_manifest
from ..targets.export import elf_machine
from ..weights import WeightMap, WeightsError
from ._rpc_server_main import INFO_FUNCTION
from .rpc_session import TRACKER_FIX, Endpoint, RPCUnavailable, check_available, looks_lost, open_session
from .trace import Track, Tracer

LABELS = {
    "emulated": "emulated (qemu-user, not a phone timing)",
    "host": "host CPU over RPC (not a phone timing)",
    None: "device",
}
NPU_TRACK_NAMES = {Track.NPU: "NPU lane (Hexagon graphs in the NPU service)",
                   Track.CPU: "CPU lane (staging the launch's Q/K rows)"}


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
    npu_launches: int | None = None  # launches the NPU ran in the verified run (None: the pilot is on the CPU)
    npu_planned: int | None = None  # plan.json's count
    trace: str | None = None
    generation: dict | None = None  # a generation build's run (`deploy_generation.Run.to_json`)

    def to_json(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [
            ("build / device", f"{self.build} / {self.device}"),
            ("server", f"{self.endpoint} ({self.server.get('arch', '?')}"
                       f"{', ' + self.server['emulator'] if self.server.get('emulator') else ''})"),
            ("output vs reference/ (max abs)", f"{self.max_abs_err:.2e} (atol {self.tolerance.atol:g}, "
                                               f"rtol {self.tolerance.rtol:g}): "
                                               f"{'verified' if self.verified else 'MISMATCH'}"),
            (f"prefill latency [{self.label}]", f"{self.median_ms:.2f} ms median, {self.mean_ms:.2f} ms mean "
                                                f"({self.repeat} x {self.number} runs)"),
            ("phases", ", ".join(f"{k} {v:.1f} s" for k, v in self.phases_s.items())),
        ]
        if self.generation is not None:
            from .deploy_generation import table_rows

            rows[3:4] = table_rows(self.generation, self.label)
        if self.npu_launches is not None:
            ok = "as planned" if self.npu_launches == self.npu_planned else "MISMATCH"
            where = "emulated Hexagon (qemu-hexagon)" if self.server.get("kind") == "emulated" else "the NPU"
            rows.insert(3, ("NPU launches", f"{self.npu_launches} executed on {where}, plan.json has "
                                            f"{self.npu_planned}: {ok}"))
            rows.append((f"Chrome trace [{self.label}]", self.trace))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _reference(manifest, model_file=None) -> tuple[list, np.ndarray]:
    """(the run's inputs in `main`'s order, the expected output) from the build's reference/ and
    the model file's weights."""
    folder = manifest.root / "reference"
    try:
        meta = json.loads((folder / "reference.json").read_text())
        data = np.load(folder / "inputs.npz")
        expected = np.load(folder / "output.npy")
    except (OSError, ValueError) as err:
        raise ManifestError(f"{manifest.root}: no usable reference/ ({err}): rebuild with `shadowattn compile`") from None
    weights = {}
    if meta["weights"]:
        if "weights" not in manifest.data["model"]:
            raise ManifestError(f"{manifest.root}: the build takes weights but names no model file: rebuild with "
                                "`shadowattn compile`")
        wmap = WeightMap.from_json(manifest.data["model"]["weights"])
        derived = {}
        if wmap.derived:
            with np.load(manifest.root / DERIVED_WEIGHTS) as data:
                derived = {name: data[name] for name in data.files}
        try:
            weights = wmap.load(model_file, derived)
        except WeightsError as err:
            raise ManifestError(str(err)) from None
    inputs = [weights[s.name] if s.name in weights else data[s.name] for s in manifest.inputs]
    return inputs, expected


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
        except (RPCUnavailable, DeployError, ManifestError):
            raise
        except Exception as err:  # noqa: BLE001 - TVM raises its own error types for RPC failures
            message = _explain(name, endpoint, err)
        finally:
            phases[name] = time.perf_counter() - start
        raise DeployError(message)  # outside the handler: no traceback into frames holding remote objects

    return timed


class _NPU:
    """The build's NPU lane on the device: upload and load npu/, count and trace the verified run."""

    def __init__(self, manifest):
        self.pilot = manifest.data.get("lanes", {}).get("pilot", {"lane": "cpu"})
        self.active = self.pilot.get("lane") == "npu"
        self.manifest = manifest

    def prepare(self, session, timed, prefix: str) -> None:
        if not self.active:
            return
        npu = self.manifest.root / "npu"
        library = json.loads((npu / "manifest.json").read_text())["library"]
        try:
            load = session.get_function("shadowattn.npu.load")
        except Exception:  # noqa: BLE001 - a server without our NPU runtime
            raise DeployError("the build runs its pilot on the NPU but the server has no shadowAttn NPU runtime "
                              "(shadowattn.npu.load): start the emulated phone with its NPU service "
                              "(`shadowattn emulated-phone start`), or compile for a device without an NPU") from None
        timed("upload npu", lambda: (session.upload(str(npu / library), library),
                                     session.upload(str(npu / "manifest.json"), f"{prefix}_npu_manifest.json")))
        timed("load npu", lambda: load(f"{prefix}_npu_manifest.json"))
        self.reset = session.get_function("shadowattn.npu.reset")
        self.stats, self.trace = session.get_function("shadowattn.npu.stats"), session.get_function("shadowattn.npu.trace")
        self.reset()

    def collect(self) -> tuple:
        """(launches the NPU service ran, trace events) of the run since `prepare`."""
        if not self.active:
            return None, []
        return int(json.loads(self.stats())["launches"]), json.loads(self.trace())


def _on_device(session, timed, manifest, cpu_module: Path, inputs, work):
    """Everything that touches remote objects; they all die with this frame (closing the session).
    `work(vm, dev, args, npu)` runs the build's workload and returns what the caller keeps."""
    prefix = f"shadowattn_{manifest.data['device']['name']}"
    info = timed("query", lambda: _server_info(session))
    built_for = elf_machine(cpu_module)
    if info.get("arch") and info["arch"] != built_for:
        raise DeployError(f"{cpu_module} is built for {built_for} but the server runs {info['arch']}: "
                          f"compile for the matching --device")
    npu = _NPU(manifest)
    npu.prepare(session, timed, prefix)
    timed("upload", lambda: session.upload(str(cpu_module), f"{prefix}_{cpu_module.name}"))
    dev = session.cpu()
    vm = timed("load", lambda: relax.VirtualMachine(session.load_module(f"{prefix}_{cpu_module.name}"), dev))
    args = timed("inputs", lambda: [tvm.runtime.tensor(x, dev) for x in inputs])
    return info, work(vm, dev, args, npu)


def _prefill_work(timed, entry: str, number: int, repeat: int):
    """The build's prefill once (verified, NPU launches counted), then time_evaluator."""
    def work(vm, dev, args, npu):
        output = timed("run", lambda: vm[entry](*args).numpy())
        launches, events = timed("npu stats", npu.collect)
        evaluator = timed("time", lambda: vm.time_evaluator(entry, dev, number=number, repeat=repeat)(*args))
        return output, [float(r) * 1e3 for r in evaluator.results], float(evaluator.mean) * 1e3, launches, events

    return work


def _write_trace(path: Path, events: list, label: str) -> str:
    tracer = Tracer(f"shadowattn deploy: NPU launches of one prefill [{label}]", NPU_TRACK_NAMES)
    tracer.origin_ns = min((e["stage"][0] for e in events), default=0)
    for e in events:
        tracer.complete(Track.CPU, f"stage {e['unit']}", *e["stage"], cat="npu_stage", unit=e["unit"])
        tracer.complete(Track.NPU, f"graph {e['unit']}", *e["npu"], cat="npu_graph", unit=e["unit"],
                        graph=e["graph"], cell=e["cell"])
    return str(tracer.save(path))


def deploy(build_dir: str | Path, endpoint: Endpoint, *, number: int = 1, repeat: int = 3,
           wait: float = 60.0, tolerance: Tolerance = Tolerance(), trace: str | Path | None = None,
           model_file: str | Path | None = None, generate=None, on_phase: Callable[[str], None] | None = None,
           log=print) -> DeployResult:
    """Run the build in `build_dir` on a device of `endpoint`; see the module docstring.

    trace: where the Chrome trace of an NPU build's verified run goes (default
    ``<build>/trace-<label>.json``). model_file: the model file the weights are read from, when it
    is no longer where the build recorded it (its sha256 must still match). A generation build
    (``compile --generate``) runs its reference prompt through prefill and greedy decode instead,
    verified token by token (`deploy_generation`); `generate` (a `deploy_generation.Request`) then
    also generates from a prompt of the user's. Raises ManifestError (bad build), RPCUnavailable (no
    session: tracker/server unreachable, key unknown, no free device within `wait` s) or
    DeployError (the session failed mid-way). `on_phase(name)` is called before each phase
    (progress; tests use it to kill the server). The session is closed before returning or raising.
    """
    manifest = load_manifest(build_dir)
    cpu_module = manifest.file_of_kind("cpu-module")
    entry = manifest.data.get("entry", "main")
    phases: dict[str, float] = {}
    timed = _phase_runner(endpoint, phases, on_phase)

    generation = manifest.data.get("generation")
    if generate is not None and generation is None:
        raise ManifestError(f"{manifest.root} has no decode step: compile it with --generate to generate text")
    if generation is not None:
        from . import deploy_generation

        inputs, expected = timed("reference", lambda: deploy_generation.reference(manifest, model_file))
        work = deploy_generation.work(timed, manifest, expected, generate)
    else:
        inputs, expected = timed("reference", lambda: _reference(manifest, model_file))
        work = _prefill_work(timed, entry, number, repeat)
    fix = f"{TRACKER_FIX} (or its RPC server with --rpc HOST:PORT)" if endpoint.via_tracker else None
    timed("check", lambda: check_available(endpoint, fix=fix))
    log(f"[deploy] running {entry} on {endpoint.describe()}")
    session = timed("connect", lambda: open_session(endpoint, wait=wait, fix=fix))
    error = None
    try:
        info, done = _on_device(session, timed, manifest, cpu_module, inputs, work)
    except DeployError as err:
        error = DeployError(str(err))  # a fresh error: the original's traceback pins the session
    finally:
        del session
        gc.collect()  # RPC sessions close when their last reference dies; TVM objects can sit in cycles
    if error is not None:
        raise error
    if generation is not None:
        done, launches, events = done
        output, expected, runs_ms, mean_ms = done.output, done.expected, [done.prefill_ms], done.prefill_ms
    else:
        output, runs_ms, mean_ms, launches, events = done
        done = None
    close = output.shape == expected.shape
    err = float(np.max(np.abs(output.astype(np.float64) - expected))) if close else float("inf")
    verified = close and bool(np.allclose(output, expected, atol=tolerance.atol, rtol=tolerance.rtol))
    verified = verified and (done is None or done.tokens == done.expected_tokens)
    label = LABELS.get(info.get("kind"), LABELS[None])
    planned = manifest.data.get("lanes", {}).get("pilot", {}).get("launches")
    trace_path = None
    if launches is not None:
        trace_path = _write_trace(Path(trace) if trace else manifest.root / f"trace-{info.get('kind', 'device')}.json",
                                  events, label)
    return DeployResult(
        build=str(manifest.root), device=manifest.data["device"]["name"], endpoint=endpoint.describe(),
        server=info, label=label, verified=verified and (launches is None or launches == planned), max_abs_err=err,
        tolerance=tolerance, mean_ms=mean_ms, median_ms=float(np.median(runs_ms)), runs_ms=runs_ms,
        number=number, repeat=repeat, phases_s={k: round(v, 3) for k, v in phases.items()},
        npu_launches=launches, npu_planned=planned, trace=trace_path,
        generation=None if done is None else done.to_json(),
    )


def _explain(phase: str, endpoint: Endpoint, err: Exception) -> str:
    text = " ".join(str(err).split())
    npu = text.find("the NPU service at ")
    if npu >= 0:  # the device's NPU runtime failed (its message is carried by the RPC error): name it, not the server
        return f"{phase!r} failed on {endpoint.describe()}: {text[npu:npu + 300]}"
    head = (f"the RPC server of {endpoint.describe()} went away during {phase!r}" if looks_lost(text)
            else f"{phase!r} failed on {endpoint.describe()}")
    return f"{head}: {text[:300]}"
