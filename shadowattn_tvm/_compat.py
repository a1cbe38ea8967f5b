"""Version-sensitive TVM imports, gathered in one place (TVM 0.27 moved many modules).

Everything else in the package imports TVM names from here, so a future move is a one-file change.
The workarounds for 0.27's slow spots live here too: TVMScript's frame lookups (`_find_parser_def`,
`fast_script_parsing`) and buffer compaction of the hand-written kernels (`EXACT_BUFFERS`).
"""
import contextlib
import inspect
import sys
import threading

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
from tvm.script.parser.core.parser import ScriptMacro

structural_equal = tvm_ffi.structural_equal
structural_hash = tvm_ffi.structural_hash


def runtime_tensor(array, device=None):
    """Copy a numpy array to a device tensor (0.27: ``tvm.runtime.tensor``)."""
    return tvm.runtime.tensor(array, device if device is not None else tvm.cpu())


__all__ = [
    "tvm", "tvm_ffi", "rpc", "Analyzer", "Op", "Type", "Constant", "relax", "te", "tirx", "s_tir", "dpl", "PyExprMutator", "mutator", "Schedule",
    "R", "T", "structural_equal", "structural_hash", "runtime_tensor", "meta_schedule", "constant_value",
    "set_type", "import_tensor_intrinsics", "fast_script_parsing", "EXACT_BUFFERS",
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


def _find_parser_def(self):
    """``ScriptMacro._find_parser_def`` without ``inspect.getouterframes``: the parser is found in
    a calling frame's globals, and 0.27 builds every outer frame's source context to read them.
    A frame with no file (``<ast>``, which the parser's evaluator compiles, ``<frozen runpy>``)
    sends ``inspect.getmodule`` over all of ``sys.modules`` (CPython issue 92041), so each macro
    call cost ~0.2 s with torch imported; 30 % of a test file's time went there."""
    frame = sys._getframe(1)
    while frame is not None:
        parser = frame.f_globals.get(ScriptMacro.parser_object_name)
        if parser is not None:
            return parser
        frame = frame.f_back
    raise RuntimeError(f"{ScriptMacro.parser_object_name} not available")


ScriptMacro._find_parser_def = _find_parser_def  # same result: the nearest frame's parser

#: PrimFunc attribute the hand-written kernels set (`T.func_attr` in ops/): every buffer they
#: allocate is sized exactly, so s_tir's CompactBufferAllocation has nothing to narrow.
EXACT_BUFFERS = "shadowattn.exact_buffers"
_compact_buffer_allocation = s_tir.transform.CompactBufferAllocation


def _compact_unless_exact(is_strict: bool = True):
    """``s_tir.transform.CompactBufferAllocation`` that leaves PrimFuncs marked `EXACT_BUFFERS`
    as they are. The pass bounds every access to an allocated buffer under all enclosing
    conditions: 0.3-1.2 s per top-k or sparse kernel (of 0.4-1.7 s to compile one) for no change
    in their code, ~25 % of a test file of small attention builds. Other functions get the pass."""
    compact = _compact_buffer_allocation(is_strict)

    def run(func, _mod, _ctx):
        if func.attrs is not None and EXACT_BUFFERS in func.attrs:
            return func
        return compact(tvm.IRModule({"main": func}))["main"]

    return tirx.transform.prim_func_pass(run, opt_level=0, name="s_tir.CompactBufferAllocation")


s_tir.transform.CompactBufferAllocation = _compact_unless_exact  # the pipelines look it up when they run

_ORIGINAL_STACK = inspect.stack
_stack_lock = threading.Lock()
_stack_users = 0


def _shallow_stack(context=1):
    """``inspect.stack`` with source context for the first three frames only: ``T.prim_func``
    reads source there (``is_defined_in_class``) and only the frame objects of the rest."""
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        if len(frames) < 3:
            frames.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
        else:
            code = frame.f_code
            frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
        frame = frame.f_back
    return frames


@contextlib.contextmanager
def fast_script_parsing():
    """Parse TVMScript (``T.prim_func`` calls ``inspect.stack()``) without looking up the source
    of every outer frame, which costs a scan of ``sys.modules`` per frame without a file. Nested
    and concurrent uses share one patch of ``inspect.stack``, restored when the last one leaves."""
    global _stack_users
    with _stack_lock:
        if _stack_users == 0:
            inspect.stack = _shallow_stack
        _stack_users += 1
    try:
        yield
    finally:
        with _stack_lock:
            _stack_users -= 1
            if _stack_users == 0:
                inspect.stack = _ORIGINAL_STACK


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (which ``meta_schedule.TuneContext`` imports) quickly:
    its several hundred ``T.prim_func`` definitions took 75 s on the 2-core host, 8 s with
    `fast_script_parsing` (the import machinery's frames have no file)."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with fast_script_parsing():
        import tvm.s_tir.tensor_intrin  # noqa: F401
