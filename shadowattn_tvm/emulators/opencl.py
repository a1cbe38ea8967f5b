"""Run generated OpenCL C on PoCL (a CPU OpenCL implementation) through pyopencl: numerics only.

    ctx = opencl.context()                   # installs PoCL with apt on first use (root, Debian)
    out = opencl.run(ctx, program, "sat_topk", {"S": scores, "ratio": r}, {"idx": ((1, 4, 8, 5), "int32")})

Needs the Debian packages ``pocl-opencl-icd ocl-icd-libopencl1`` (installed on demand through
`emulators.toolchain.apt_install`) and the PyPI package ``pyopencl`` (in the ``test`` extra).
Debian's PoCL has no ``cl_khr_fp16``: run the fp32 twins of fp16 kernels. No speed signal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

APT_PACKAGES = ("pocl-opencl-icd", "ocl-icd-libopencl1")
POCL_ICD = "/etc/OpenCL/vendors/pocl.icd"
_PLATFORM = "Portable Computing Language"


class OpenCLEmulatorError(RuntimeError):
    """PoCL or pyopencl is missing and could not be installed, or a kernel launch failed."""


def _pyopencl():
    try:
        import pyopencl  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise OpenCLEmulatorError(f"pyopencl is not importable ({err}): pip install -e '.[test]' "
                                  "(or pip install pyopencl)") from None
    return pyopencl


def _pocl_platform(cl):
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader finds no platform at all
        platforms = []
    return next((p for p in platforms if p.name == _PLATFORM), None)


def context(*, log=print):
    """A pyopencl context on PoCL's CPU device, installing PoCL with apt if it is missing."""
    cl = _pyopencl()
    # install before the first platform query: the ICD loader reads the vendor directory once
    # per process, so a PoCL installed after a query would stay invisible until a restart
    if not Path(POCL_ICD).exists():
        from .toolchain import ToolchainError, apt_install  # pylint: disable=import-outside-toplevel

        try:
            apt_install(APT_PACKAGES, log=log)
        except ToolchainError as err:
            raise OpenCLEmulatorError(str(err)) from None
    platform = _pocl_platform(cl)
    if platform is None:
        raise OpenCLEmulatorError(f"pyopencl sees no PoCL platform although {POCL_ICD} exists: check that "
                                  f"{' '.join(APT_PACKAGES)} are installed (apt-get install -y ...)")
    return cl.Context(platform.get_devices())


def _scalar(arg, arrays: dict, shapes: dict) -> np.generic:
    if arg.value_of is None:
        raise OpenCLEmulatorError(f"kernel scalar {arg.name} is not a buffer dimension; cannot fill it in")
    buf, axis = arg.value_of[:-1].split(".shape[")
    shape = arrays[buf].shape if buf in arrays else shapes[buf][0]
    return np.dtype(arg.dtype).type(shape[int(axis)])


def run(ctx, program, func: str, inputs: dict, outputs: dict) -> dict:
    """Launch the kernel of PrimFunc `func` from `program` (`targets.adreno.opencl.OpenCLProgram`).

    inputs: buffer name -> numpy array; outputs: buffer name -> (shape, dtype). Returns the
    outputs as numpy arrays. Arguments are bound by name, in the kernel's own order.
    """
    cl = _pyopencl()
    kernel = program.kernel(func)
    queue = cl.CommandQueue(ctx)
    mf = cl.mem_flags
    arrays = {name: np.ascontiguousarray(a) for name, a in inputs.items()}
    host_out = {name: np.zeros(shape, dtype) for name, (shape, dtype) in outputs.items()}
    args, buffers = [], {}
    for arg in kernel.args:
        if arg.kind == "scalar":
            args.append(_scalar(arg, arrays, outputs))
            continue
        if arg.name in arrays:
            data = arrays[arg.name]
            buffers[arg.name] = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=data)
        elif arg.name in host_out:
            buffers[arg.name] = cl.Buffer(ctx, mf.READ_WRITE, max(host_out[arg.name].nbytes, 1))
        else:
            raise OpenCLEmulatorError(f"kernel {kernel.name} needs buffer {arg.name!r}; got {sorted(arrays)} "
                                      f"and outputs {sorted(host_out)}")
        args.append(buffers[arg.name])
    if not all(isinstance(n, int) for n in kernel.grid + kernel.block):
        raise OpenCLEmulatorError(f"kernel {kernel.name} has symbolic launch sizes {kernel.grid}; build it for "
                                  "static shapes")
    try:
        built = cl.Program(ctx, program.source).build()
        getattr(built, kernel.name)(queue, kernel.global_size, kernel.block, *args)
        for name, array in host_out.items():
            cl.enqueue_copy(queue, array, buffers[name])
        queue.finish()
    except cl.Error as err:
        raise OpenCLEmulatorError(f"PoCL failed on {kernel.name}: {err}") from None
    return host_out


__all__ = ["APT_PACKAGES", "OpenCLEmulatorError", "context", "run"]
