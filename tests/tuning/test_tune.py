"""Tuning tasks from the compiled model and argument checks. A tuning run itself (records in
MetaSchedule's layout, shipped baselines, resume, tuned vs shipped) is in
tests/runtime/test_tune_faults.py, which also kills the device mid-run; the suite does two
MetaSchedule runs (that one, and the emulated phone's), each ~1 min on two workers."""
import pytest
from tvm import relax

from shadowattn_tvm.tuning.driver import SPARSE_TASK, tune
from shadowattn_tvm.tuning.tasks import extract_tasks, model_tasks
from shadowattn_tvm.targets import get

TOKENS = 64
TARGET = get("host").cpu
quiet = dict(log=lambda _msg: None)


def test_tasks_come_from_the_compiled_model():
    tasks = {t.name: t for t in model_tasks("default", TOKENS, 0.2, 16, TARGET)}
    # the hand-written pilot and top-k kernels have nothing to tune; the sparse kernel's TE form does
    assert sorted(tasks) == [SPARSE_TASK, "transpose", "transpose1", "transpose2"]
    assert tasks["transpose1"].weight == 2  # k and v
    assert "tirx.is_scheduled" in tasks[SPARSE_TASK].shipped.attrs  # baseline: the hand-written kernel
    assert all(t.index_bound == TOKENS for t in tasks.values())


def _mlp() -> "tvm.IRModule":
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((64, 96), "float32"))
    w = relax.Var("w", relax.TensorType((96, 128), "float32"))
    w2 = relax.Var("w2", relax.TensorType((128, 96), "float32"))
    with bb.function("main", [x, w, w2]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.matmul(x, w)))
            out = bb.emit_output(relax.op.matmul(y, w2))
        bb.emit_func_output(out)
    return bb.get()


def test_matmuls_of_a_model_are_tasks():
    with TARGET:
        tasks = extract_tasks(_mlp(), index_bound=1)
    assert sorted(t.name for t in tasks) == ["fused_matmul_relu", "matmul1"]  # as the lowering fuses them
    assert all("tirx.is_scheduled" in t.shipped.attrs for t in tasks)  # baseline: the default CPU schedule


def test_phone_needs_an_endpoint_and_tasks_are_checked(tmp_path):
    with pytest.raises(ValueError, match="give an RPC tracker endpoint"):
        tune("snapdragon-8gen3", trials=1, work_dir=tmp_path, **quiet)
    with pytest.raises(ValueError, match="unknown tuning tasks"):
        tune("host", tasks=("topk9",), trials=1, tokens=TOKENS, work_dir=tmp_path, **quiet)
