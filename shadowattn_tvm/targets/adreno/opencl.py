"""OpenCL C of GPU-scheduled PrimFuncs, with each kernel's arguments and launch sizes.

    program = opencl.build_source({"sat_topk": func}, targets.get("snapdragon-8gen3").gpu)
    program.source                    # OpenCL C text (what `target.build.opencl` emits)
    program.kernels[0].args           # kernel arguments in kernel order, by PrimFunc name
    program.kernels[0].grid, .block   # work-groups and work-group size (x, y, z)

The PyPI TVM wheel has OpenCL codegen but no OpenCL runtime, so `tvm.compile` cannot hand us a
module to run; we run the TIR build steps by hand instead (BindTarget, the target's default TIR
pipeline, host/device split, the device finalize passes, ``target.build.opencl``). Launch sizes
come from the host IR's ``call_ffi_kernel(name, kernel args..., launch values...)``.

Kernel arguments are not in PrimFunc order (TVM sorts them by buffer name), so each one is named:
a buffer by its PrimFunc buffer name, a scalar by the shape variable it carries.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Mapping

from ..._compat import tirx, tvm

_GRID = ("blockIdx.x", "blockIdx.y", "blockIdx.z")
_BLOCK = ("threadIdx.x", "threadIdx.y", "threadIdx.z")


class OpenCLBuildError(ValueError):
    """A function cannot become OpenCL C (wrong target, or no GPU schedule)."""


@dataclass(frozen=True)
class KernelArg:
    name: str  # PrimFunc buffer name, or the shape variable's name for a scalar
    kind: str  # "buffer" or "scalar"
    dtype: str  # element dtype of a buffer, dtype of a scalar
    param: int | None = None  # position of the buffer among the PrimFunc's parameters
    value_of: str | None = None  # for a scalar: which buffer dimension it is, e.g. "S.shape[2]"

    def to_json(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "dtype": self.dtype}
        if self.param is not None:
            out["param"] = self.param
        if self.value_of is not None:
            out["value_of"] = self.value_of
        return out


@dataclass(frozen=True)
class OpenCLKernel:
    name: str  # the __kernel symbol
    func: str  # the PrimFunc it came from
    args: tuple  # KernelArg, in kernel argument order
    grid: tuple  # work-groups (x, y, z): ints, or expression strings for symbolic shapes
    block: tuple  # work-group size (x, y, z)

    @property
    def global_size(self) -> tuple:
        """OpenCL's global work size (grid * block) for static launches."""
        return tuple(g * b if isinstance(g, int) and isinstance(b, int) else f"({g}) * {b}"
                     for g, b in zip(self.grid, self.block))

    def to_json(self) -> dict:
        return {"name": self.name, "func": self.func, "args": [a.to_json() for a in self.args],
                "grid": list(self.grid), "block": list(self.block), "global_work_size": list(self.global_size)}


@dataclass(frozen=True)
class OpenCLProgram:
    source: str
    kernels: tuple  # OpenCLKernel

    def kernel(self, func: str) -> OpenCLKernel:
        """The single kernel of PrimFunc `func` (KeyError if it has none or several)."""
        found = [k for k in self.kernels if k.func == func]
        if len(found) != 1:
            raise KeyError(f"PrimFunc {func!r} has {len(found)} kernels in this program, expected one")
        return found[0]

    def to_json(self) -> dict:
        return {"kernels": [k.to_json() for k in self.kernels]}


def _stages(target):
    """(pipeline, finalize_host, finalize_device) of the target's default TIR pipeline.

    TVM 0.27's "adreno" pipeline factory returns only the pipeline pass (the s_tir one returns
    the triple), so the finalize passes are taken from s_tir's pipeline then.
    """
    stages = tirx.get_default_tir_pipeline(target)
    if isinstance(stages, tuple):
        return stages
    from tvm.s_tir import pipeline as s_tir_pipeline

    return stages, s_tir_pipeline.finalize_host_passes, s_tir_pipeline.finalize_device_passes


def _check_target(target):
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    if target.kind.name != "opencl":
        raise OpenCLBuildError(f"OpenCL C needs an OpenCL target (e.g. tag 'qcom/adreno-opencl'), got kind "
                               f"{target.kind.name!r}: this device/target has no OpenCL GPU")
    if target.host is None:
        target = tvm.target.Target(target, host=tvm.target.Target("llvm"))
    return target


def _stmts(stmt):
    """Every statement under `stmt` (the fields host code uses: bodies, sequences, branches)."""
    yield stmt
    for field in ("body", "seq", "then_case", "else_case"):
        child = getattr(stmt, field, None)
        if child is None:
            continue
        for sub in (child if not isinstance(child, tirx.Stmt) else (child,)):
            yield from _stmts(sub)


def _is_call(expr, op: str) -> bool:
    return isinstance(expr, tvm.ir.Call) and getattr(expr.op, "name", "") == op


def _launches(host_mod) -> tuple[dict, dict]:
    """(kernel symbol -> (kernel args, launch params, launch values), buffer name -> the name of
    the buffer whose data it views) from the host functions."""
    found, views = {}, {}
    for func in host_mod.functions.values():
        for stmt in _stmts(func.body):
            if isinstance(stmt, tirx.DeclBuffer) and _is_call(stmt.data, "tirx.buffer_data"):
                if stmt.data.args[0].name != stmt.buffer.name:
                    views[stmt.buffer.name] = stmt.data.args[0].name
            call = getattr(stmt, "value", None) if isinstance(stmt, tirx.Evaluate) else None
            if _is_call(call, "tirx.call_ffi_kernel"):
                # flag-only launch tags take no value; thread extents and dynamic shared bytes do
                params = [str(p) for p in call.attrs.launch_params if str(p) in _GRID + _BLOCK or "dyn" in str(p)]
                cut = len(call.args) - len(params)
                found[str(call.args[0].value)] = (list(call.args[1:cut]), params, list(call.args[cut:]))
    return found, views


def _value(expr):
    return int(expr.value) if isinstance(expr, tirx.IntImm) else str(expr)


def _arg_names(func) -> tuple[dict, dict]:
    """(buffer name -> (BufferType, param index), shape var name -> "B.shape[i]") of a PrimFunc.

    TVM 0.27 PrimFunc parameters are the buffers themselves (vars of `BufferType`).
    """
    buffers, dims = {}, {}
    for n, param in enumerate(func.params):
        ty = param.ty
        if not hasattr(ty, "shape"):
            continue
        buffers[param.name] = (ty, n)
        for axis, dim in enumerate(ty.shape):
            if isinstance(dim, tirx.Var):
                dims.setdefault(dim.name, f"{param.name}.shape[{axis}]")
    return buffers, dims


def _kernel_args(host_args, func, views: dict) -> tuple:
    buffers, dims = _arg_names(func)
    args = []
    for expr in host_args:
        if _is_call(expr, "tirx.buffer_data"):
            # a buffer's data pointer: name it by the parameter whose data it is (a view with
            # another dtype is byte-compatible with it; TVM types the kernel argument by the view)
            name = expr.args[0].name
            while name not in buffers and name in views:
                name = views[name]
        else:
            name = expr.name if isinstance(expr, tirx.Var) else str(expr)
        if name in buffers:
            ty, param = buffers[name]
            args.append(KernelArg(name, "buffer", str(ty.dtype), param=param))
        else:
            args.append(KernelArg(name, "scalar", str(expr.ty.dtype), value_of=dims.get(name)))
    return tuple(args)


def _sizes(params, values, names) -> tuple:
    by_tag = dict(zip(params, values))
    return tuple(_value(by_tag[tag]) if tag in by_tag else 1 for tag in names)


def build_source(funcs: "Mapping[str, tirx.PrimFunc] | tirx.PrimFunc", target) -> OpenCLProgram:
    """OpenCL C and kernel table of GPU-scheduled PrimFuncs (name -> func, or one func).

    Raises OpenCLBuildError for a non-OpenCL target or a function that yields no OpenCL kernel
    (e.g. not scheduled for a GPU: TVM would then silently build it for the host CPU).
    """
    target = _check_target(target)
    if isinstance(funcs, tirx.PrimFunc):
        name = str(funcs.attrs["global_symbol"]) if funcs.attrs and "global_symbol" in funcs.attrs else "main"
        funcs = {name: funcs}
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name) for name, func in funcs.items()})
    pipeline, _, finalize_device = _stages(target)  # the host side is the phone runtime's job
    # no common-subexpression elimination: it would hand kernels host-computed temporaries as
    # extra scalar arguments; the arguments stay the PrimFunc's own buffers and shape variables
    with target, tvm.transform.PassContext(config={"tirx.disable_cse_tir": True}):
        mod = pipeline(tirx.transform.BindTarget(target)(mod))
    split = importlib.import_module("tvm.tirx.build").split_host_device_mods
    host_mod, device_mods = split(mod)
    device_mods = {t: m for t, m in device_mods.items() if t.kind.name == "opencl" and len(m.functions)}
    if not device_mods:
        raise OpenCLBuildError(f"{sorted(funcs)} produced no OpenCL kernel: bind loops to blockIdx/threadIdx "
                               f"first (targets.adreno.schedules)")
    build = tvm.get_global_func("target.build.opencl")
    launches, views = _launches(host_mod)
    sources, kernels = [], []
    for dev_target, dev_mod in device_mods.items():
        sources.append(build(finalize_device()(dev_mod), dev_target).inspect_source())
        for gv in dev_mod.functions:
            symbol = gv.name_hint
            owner = max((n for n in funcs if symbol.startswith(n)), key=len)
            host_args, params, values = launches[symbol]
            kernels.append(OpenCLKernel(symbol, owner, _kernel_args(host_args, funcs[owner], views),
                                        _sizes(params, values, _GRID), _sizes(params, values, _BLOCK)))
    missing = sorted(set(funcs) - {k.func for k in kernels})
    if missing:
        raise OpenCLBuildError(f"{missing} produced no OpenCL kernel: bind loops to blockIdx/threadIdx first "
                               f"(targets.adreno.schedules)")
    return OpenCLProgram("\n".join(sources), tuple(sorted(kernels, key=lambda k: k.name)))


__all__ = ["KernelArg", "OpenCLBuildError", "OpenCLKernel", "OpenCLProgram", "build_source"]
