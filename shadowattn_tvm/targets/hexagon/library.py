"""Hexagon NPU graph library: bucket graphs compiled by TVM's LLVM Hexagon codegen, one `.so` per arch.

    lib = build_graph_library({"sat_npu_L0_f2_q64_kv512_c4": bucket_graph(...), ...}, "v75", "build/npu/v75")
    lib.graphs[key].symbol        # "__tvm_ffi_sat_npu_L0_f2_q64_kv512_c4", the packed-API entry point
    lib.library_path              # build/npu/v75/graphs_v75.so (ELF32 QDSP6), lib.manifest_path
    lib.assembly(key)             # the graph's Hexagon assembly (`inspect_source("asm")`)

Why a manual build path: `tvm.compile` fails for Hexagon in TVM 0.27 (its host/device split only
knows llvm/c/cuda_host hosts, leaving `tvm_call_packed` unlowered), so each graph runs BindTarget ->
the default TIR pipeline -> the host finalize passes -> `target.build.hexagon`. That codegen links
through the global `tvm.contrib.hexagon.link_shared` (the Hexagon SDK linker); `_link_hook` swaps in
Debian's `ld.lld` for the duration of a build and keeps each graph's object. All objects are then
linked into one library: the graph library of the issue (per-graph objects stay next to it).

Targets: the `qcom/hexagon-v73` / `-v75` tags with `hvx-qfloat` off. HVX float is not IEEE, so
LLVM auto-vectorizing the quantize loops into qf32 would break bit-exactness with the host twin
(and qemu 7.2 aborts on it); integer HVX (vrmpy, vadd, vmem) is unaffected.
"""
from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ... import settings
from ..._compat import tvm
from ...ops.npu_graph import HVX_DEPTH, HVX_KEYS, bucket_params
from .schedules import rows_per_block, schedule_bucket_graph
from .inspect import asm_function, code_bytes, dynamic_symbols, hvx_loop_macs, short_calls

MANIFEST = "manifest.json"
FORMAT = "shadowattn-hexagon-graphs/2"  # 2: K [kv_len, D] once per graph, one k_scale
_CACHE_VERSION = "1"  # bump when the schedule or the build steps change what an object contains


class HexagonArch(str, enum.Enum):
    V73 = "v73"
    V75 = "v75"

    @property
    def tag(self) -> str:
        return f"qcom/hexagon-{self.value}"


class HexagonBuildError(RuntimeError):
    """A graph failed to compile or the library failed to link."""


@dataclass(frozen=True)
class HexagonOptions:
    """How graph libraries are built. `cache`: reuse the object of an identical lowered module
    (key: its TVMScript, the target, the TVM version) from ``SHADOWATTN_CACHE/hexagon/objects``."""

    arch: HexagonArch = HexagonArch.V75
    cache: bool = True
    keep_asm: bool = True
    linker: str = "ld.lld"

    def __post_init__(self):
        object.__setattr__(self, "arch", arch_of(self.arch))

    def target(self):
        return hexagon_target(self.arch)


def arch_of(arch) -> HexagonArch:
    """"v75", HexagonArch.V75, a tag "qcom/hexagon-v75" or a hexagon Target -> HexagonArch."""
    if isinstance(arch, HexagonArch):
        return arch
    text = str(arch.attrs["mcpu"]).replace("hexagon", "") if isinstance(arch, tvm.target.Target) else str(arch)
    text = text.rsplit("-", 1)[-1]
    try:
        return HexagonArch(text)
    except ValueError:
        raise ValueError(f"unsupported Hexagon arch {arch!r}; known: {[a.value for a in HexagonArch]}") from None


def hexagon_target(arch):
    """The TVM target of `arch`: its qcom tag with HVX float turned off (see module docstring)."""
    config = dict(tvm.target.Target(arch_of(arch).tag).export())
    config.pop("tag", None)
    config["keys"] = list(config["keys"])
    config["mattr"] = [m for m in config["mattr"] if m.lstrip("+-") not in ("hvx-qfloat", "hvx-ieee-fp")]
    # long calls: a library of a whole model's graphs spans more than a direct call's +-8 MiB
    # (R_HEX_B22_PCREL "out of range" from ld.lld on SmolLM2's 270 graphs)
    config["mattr"] += ["-hvx-qfloat", "-hvx-ieee-fp", "+long-calls"]
    return tvm.target.Target(config)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple
    dtype: str


@dataclass(frozen=True)
class GraphEntry:
    """One bucket graph in a library (a manifest entry)."""

    key: str
    function: str  # TVM global symbol
    symbol: str  # packed-API entry point: __tvm_ffi_<function>
    fused: int
    q_chunk: int
    kv_len: int
    head_dim: int
    dtype: str
    q_scales: tuple  # one per fused head
    k_scale: float  # the group's one KV head
    inputs: tuple  # (TensorInfo q [fused, q_chunk, D], TensorInfo k [kv_len, D])
    outputs: tuple  # (TensorInfo scores,)
    object: str  # relative to the library directory
    object_bytes: int  # the .o file, with debug info
    code_bytes: int  # its allocated sections (.text, .rodata, ...): what the graph adds to the .so
    hvx_loop_macs: int  # vrmpy instructions inside loops of its compute function
    workspace_bytes: int  # scratch it asks TVMBackendAllocWorkspace for per call (packed K, Q rows)
    asm: str | None = None  # relative path of its assembly
    build_seconds: float = 0.0
    cached: bool = False


@dataclass(frozen=True)
class GraphLibrary:
    """A built (or loaded) graph library: directory, arch and one entry per bucket key."""

    directory: Path
    arch: HexagonArch
    library: str
    library_bytes: int
    graphs: dict = field(default_factory=dict)  # key -> GraphEntry
    target: dict = field(default_factory=dict)
    imports: tuple = ()  # undefined symbols the loader must provide (TVM FFI error hook, memset, ...)

    @property
    def library_path(self) -> Path:
        return self.directory / self.library

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def assembly(self, key: str) -> str:
        entry = self.graphs[key]
        if entry.asm is None:
            raise FileNotFoundError(f"graph {key!r} was built with keep_asm=False")
        return (self.directory / entry.asm).read_text()

    def to_json(self) -> dict:
        return {"format": FORMAT, "arch": self.arch.value, "target": self.target, "tvm_version": tvm.__version__,
                "library": self.library, "library_bytes": self.library_bytes, "imports": list(self.imports),
                "graphs": {k: {f: v for f, v in asdict(e).items() if f != "key"} for k, e in self.graphs.items()}}


def load_graph_library(path) -> GraphLibrary:
    """A library from its directory or its manifest.json."""
    path = Path(path)
    manifest = path if path.name == MANIFEST else path / MANIFEST
    data = json.loads(manifest.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{manifest}: not a {FORMAT} manifest")
    graphs = {}
    for key, raw in data["graphs"].items():
        raw = dict(raw)
        for io in ("inputs", "outputs"):
            raw[io] = tuple(TensorInfo(t["name"], tuple(t["shape"]), t["dtype"]) for t in raw[io])
        raw["q_scales"] = tuple(raw["q_scales"])
        graphs[key] = GraphEntry(key=key, **raw)
    return GraphLibrary(manifest.parent, HexagonArch(data["arch"]), data["library"], data["library_bytes"],
                        graphs, data["target"], tuple(data["imports"]))


def function_name(key: str) -> str:
    """A C identifier for bucket key `key` (the TVM global symbol of its graph)."""
    name = re.sub(r"\W", "_", key)
    return name if re.match(r"[A-Za-z_]", name) else f"g_{name}"


def lower(func, name: str, target):
    """IRModule ready for `target.build.hexagon`: BindTarget -> default TIR pipeline -> host finalize."""
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name)})
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(mod)
    pipeline, finalize_host, _finalize_device = tvm.tirx.get_default_tir_pipeline(target)
    return finalize_host()(pipeline(mod))


_CAPTURE = threading.local()  # per thread: the objects its current codegen call linked


@contextlib.contextmanager
def _link_hook(linker: str):
    """Route TVM's Hexagon link step to `ld.lld -shared` while active; each object's bytes go to
    the calling thread's `_CAPTURE.objects` (the codegen calls the hook on its own thread)."""
    name = "tvm.contrib.hexagon.link_shared"
    previous = tvm.get_global_func(name, allow_missing=True)

    def link_shared(so_name, objs, extra_args=None):
        paths = [str(getattr(o, "value", o)) for o in objs]
        _CAPTURE.objects.extend(Path(p).read_bytes() for p in paths)
        _run([linker, "-shared", "-o", str(so_name), *paths])
        return 0

    tvm.register_global_func(name, link_shared, override=True)
    try:
        yield
    finally:
        if previous is not None:
            tvm.register_global_func(name, previous, override=True)


def _run(cmd) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        raise HexagonBuildError(f"`{' '.join(cmd)}` failed: {(result.stderr or result.stdout).strip()[-2000:]}")


def find_linker(linker: str = "ld.lld", *, install: bool = True) -> str:
    """Path of `linker`; installs Debian's lld when it is missing (root on Debian), else raises."""
    path = shutil.which(linker)
    if path is None and install and linker == "ld.lld":
        from ...emulators.toolchain import ToolchainError, apt_install

        try:
            apt_install(["lld"], log=lambda _msg: None)
        except ToolchainError as err:
            raise HexagonBuildError(str(err)) from None
        path = shutil.which(linker)
    if path is None:
        raise HexagonBuildError(f"linker {linker!r} not found: install Debian's lld (`apt-get install lld`)")
    return path


def compile_graph(func, name: str, options: HexagonOptions = HexagonOptions()) -> tuple[bytes, str, bool]:
    """(object bytes, assembly, from cache) of bucket graph `func` scheduled for HVX, as `name`."""
    with _link_hook(find_linker(options.linker)):
        return _compile(func, name, options)


def _compile(func, name: str, options: HexagonOptions) -> tuple[bytes, str, bool]:
    target = options.target()
    mod = lower(schedule_bucket_graph(func), name, target)
    key = hashlib.sha256("\0".join([_CACHE_VERSION, tvm.__version__, str(target), mod.script()]).encode()).hexdigest()
    obj_path = settings.cache_dir() / "hexagon" / "objects" / key[:2] / f"{key}.o"
    asm_path = obj_path.with_suffix(".s")
    if options.cache and obj_path.exists() and asm_path.exists():
        return obj_path.read_bytes(), asm_path.read_text(), True
    _CAPTURE.objects = []
    module = tvm.get_global_func("target.build.hexagon")(mod, target)
    objects, _CAPTURE.objects = _CAPTURE.objects, []
    if len(objects) != 1:
        raise HexagonBuildError(f"expected one object from the Hexagon codegen of {name}, got {len(objects)}")
    asm = module.inspect_source("asm")
    if options.cache:
        obj_path.parent.mkdir(parents=True, exist_ok=True)
        for path, data in ((asm_path, asm.encode()), (obj_path, objects[0])):  # object last: it marks "done"
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a concurrent build never reads half a file
    return objects[0], asm, False


def build_graph_library(graphs, arch, out_dir, *, options: HexagonOptions | None = None, log=None) -> GraphLibrary:
    """Compile every bucket graph of `graphs` (key -> `bucket_graph` PrimFunc) for `arch` ("v73",
    "v75", a tag or a hexagon Target) and link them into ``out_dir/graphs_<arch>.so``; writes
    ``out_dir/manifest.json``, ``out_dir/objects/<function>.o`` and ``out_dir/asm/<function>.s``.
    One directory holds one arch's library."""
    options = HexagonOptions(arch=arch_of(arch)) if options is None else options
    if arch is not None and arch_of(arch) != options.arch:
        raise ValueError(f"arch {arch!r} differs from options.arch {options.arch.value!r}")
    if not graphs:
        raise ValueError("no graphs to build")
    names = {}
    for key in graphs:
        name = function_name(key)
        if name in names:
            raise ValueError(f"bucket keys {names[name]!r} and {key!r} map to the same symbol {name!r}")
        names[name] = key
    out = Path(out_dir)
    (out / "objects").mkdir(parents=True, exist_ok=True)
    if options.keep_asm:
        (out / "asm").mkdir(exist_ok=True)
    linker = find_linker(options.linker)

    def build_one(key):
        name, start = function_name(key), time.perf_counter()
        try:
            obj, asm, cached = _compile(graphs[key], name, options)
        except Exception as err:  # noqa: BLE001 - name the graph, keep the cause
            raise HexagonBuildError(f"graph {key!r} ({name}) failed to build for {options.arch.value}: {err}") from err
        seconds = time.perf_counter() - start
        (out / "objects" / f"{name}.o").write_bytes(obj)
        if options.keep_asm:
            (out / "asm" / f"{name}.s").write_text(asm)
        entry = _entry(key, name, bucket_params(graphs[key]), obj, asm, options.keep_asm, seconds, cached)
        if log:
            log(f"[hexagon {options.arch.value}] {key}: {entry.object_bytes} B object, {entry.code_bytes} B code, "
                f"{seconds:.2f} s{' (cached)' if cached else ''}")
        return entry

    with _link_hook(linker):  # sequential: compiling in threads measured no faster
        entries = {key: build_one(key) for key in graphs}
    library = f"graphs_{options.arch.value}.so"
    objects = [str(out / e.object) for e in entries.values()]
    _run([linker, "-shared", "--hash-style=both", f"-soname={library}", "-o", str(out / library), *objects])
    missing = {e.symbol for e in entries.values()} - dynamic_symbols(out / library)
    if missing:
        raise HexagonBuildError(f"{library} does not export {sorted(missing)}")
    lib = GraphLibrary(out, options.arch, library, (out / library).stat().st_size, entries,
                       json.loads(json.dumps(dict(options.target().export()), default=list)),
                       tuple(sorted(dynamic_symbols(out / library, defined=False))))
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(lib.to_json(), indent=1))
    tmp.replace(lib.manifest_path)
    return lib


def _entry(key, name, p, obj, asm, keep_asm, seconds, cached) -> GraphEntry:
    f, qc, kv, d = p["fused"], p["q_chunk"], p["kv_len"], p["head_dim"]
    return GraphEntry(
        key=key, function=name, symbol=f"__tvm_ffi_{name}", fused=f, q_chunk=qc, kv_len=kv, head_dim=d,
        dtype=p["dtype"], q_scales=tuple(p["q_scales"]), k_scale=p["k_scale"],
        inputs=(TensorInfo("q", (f, qc, d), p["dtype"]), TensorInfo("k", (kv, d), p["dtype"])),
        outputs=(TensorInfo("scores", (f, qc, kv), "int32"),),
        object=f"objects/{name}.o", object_bytes=len(obj), code_bytes=code_bytes(obj),
        hvx_loop_macs=hvx_loop_macs(asm, name), workspace_bytes=workspace_bytes(p),
        asm=f"asm/{name}.s" if keep_asm else None,
        build_seconds=round(seconds, 3), cached=cached)


def workspace_bytes(params: dict) -> int:
    """Scratch one call of the scheduled graph allocates: the group's K packed once, plus one row
    block's Q words, biases and accumulators (see `targets.hexagon.schedules`)."""
    words = -(-params["head_dim"] // HVX_DEPTH)
    keys = -(-params["kv_len"] // HVX_KEYS) * HVX_KEYS
    rows = rows_per_block(params["q_chunk"])
    return keys * words * HVX_DEPTH + rows * (words * 4 + 4 + HVX_KEYS * 4)


__all__ = ["HexagonArch", "HexagonBuildError", "HexagonOptions", "GraphEntry", "GraphLibrary", "TensorInfo",
           "arch_of", "hexagon_target", "function_name", "lower", "compile_graph", "build_graph_library",
           "load_graph_library", "find_linker", "code_bytes", "dynamic_symbols", "asm_function", "hvx_loop_macs",
           "short_calls"]
