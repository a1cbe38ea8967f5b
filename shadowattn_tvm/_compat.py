"""Version-sensitive TVM imports, gathered in one place (TVM 0.27 moved many modules).

Everything else in the package imports TVM names from here, so a future move is a one-file change.
"""
import tvm
import tvm_ffi
from tvm import relax, rpc, te, tirx
from tvm.sym import Analyzer
from tvm import s_tir
from tvm.ir import Op, Type
from tvm.ir.expr import Constant
from tvm.relax import dpl
from tvm.relax.expr import _update_type as set_type  # an unbound expression's inferred type
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.s_tir import Schedule
from tvm.script import relax as R
from tvm.script import tirx as T

structural_equal = tvm_ffi.structural_equal
structural_hash = tvm_ffi.structural_hash


def runtime_tensor(array, device=None):
    """Copy a numpy array to a device tensor (0.27: ``tvm.runtime.tensor``)."""
    return tvm.runtime.tensor(array, device if device is not None else tvm.cpu())


__all__ = [
    "tvm", "tvm_ffi", "rpc", "Analyzer", "Op", "Type", "Constant", "relax", "te", "tirx", "s_tir", "dpl", "PyExprMutator", "mutator", "Schedule",
    "R", "T", "structural_equal", "structural_hash", "runtime_tensor", "meta_schedule", "constant_value",
    "set_type", "import_tensor_intrinsics",
]


def constant_value(expr):
    """The numpy value of a Relax constant (0.27: ``Constant.value``), else None."""
    if isinstance(expr, Constant):
        value = expr.value
        return value.numpy() if hasattr(value, "numpy") else None
    return None


def meta_schedule():
    """``tvm.s_tir.meta_schedule`` (0.27; was ``tvm.meta_schedule``), imported on first use: it is slow."""
    from tvm.s_tir import meta_schedule as ms

    return ms


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (which ``meta_schedule.TuneContext`` imports) quickly.

    Each of its several hundred ``T.prim_func`` definitions calls ``inspect.stack()``, which looks
    up the source of every frame; a frame of the import machinery (``<frozen importlib...>``) has
    no file, so each lookup scans ``sys.modules``: the import took 75 s on the 2-core host. The
    parser reads source context only from the first three frames (``is_defined_in_class``) and
    the frame objects of the rest, so this import runs with an ``inspect.stack`` that gives the
    rest without source (8 s)."""
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return

    def stack(context=1):
        frames, frame = [], sys._getframe(1)
        while frame is not None:
            if len(frames) < 3:
                frames.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
            else:
                code = frame.f_code
                frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
            frame = frame.f_back
        return frames

    original, inspect.stack = inspect.stack, stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original
