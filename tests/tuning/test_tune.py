"""MetaSchedule tuning on this machine: tasks from the compiled model, records in MetaSchedule's
layout, shipped baselines, resume, tuned vs shipped.

The tuning test takes ~1-2 min, mostly MetaSchedule's fixed start-up: its TuneContext imports
every tensor intrinsic (`tvm.s_tir.tensor_intrin`, ~30 s of CPU), once per process.
"""
import json

import pytest
from tvm import relax

from shadowattn_tvm.tuning.driver import SPARSE_TASK, compare_on_host, tune
from shadowattn_tvm.tuning.database import BASELINE_FILE, TuningDatabase
from shadowattn_tvm.tuning.tasks import extract_tasks, model_tasks
from shadowattn_tvm.targets import get

TOKENS = 64
TARGET = get("host").cpu
quiet = dict(log=lambda _msg: None)


@pytest.mark.slow
def test_tune_writes_records_baselines_and_resumes(tmp_path):
    work = tmp_path / "tune_logs" / "host"
    first = tune("host", tasks=("sparse_attention",), trials=3, tokens=TOKENS, work_dir=work, **quiet)
    assert sorted(p.name for p in work.iterdir() if p.suffix == ".json") == [
        "database_tuning_record.json", "database_workload.json", BASELINE_FILE]
    assert first.records == 3 and first.best_ms[SPARSE_TASK] > 0 and first.shipped_ms[SPARSE_TASK] > 0
    assert len((work / "database_workload.json").read_text().splitlines()) == 1
    assert all(len(json.loads(line)) == 2 for line in (work / "database_tuning_record.json").read_text().splitlines())
    baseline = json.loads((work / BASELINE_FILE).read_text())
    assert [(v["task"], v["kernel"]) for v in baseline.values()] == [(SPARSE_TASK, "hand-written")]

    second = tune("host", tasks=("sparse_attention",), trials=1, tokens=TOKENS, work_dir=work, **quiet)  # resumes
    assert second.records == 4 and second.shipped_ms == first.shipped_ms  # the baseline is measured once
    assert second.best_ms[SPARSE_TASK] <= first.best_ms[SPARSE_TASK]

    rows = compare_on_host(work, tokens=TOKENS, repeat=2)
    assert [r["task"] for r in rows] == [SPARSE_TASK] and rows[0]["tuned_ms"] > 0 and rows[0]["shipped_ms"] > 0
    choice = TuningDatabase(work).choice(SPARSE_TASK, model_tasks("default", TOKENS, 0.2, 16, TARGET)[0].func)
    assert choice.shipped_ms == pytest.approx(first.shipped_ms[SPARSE_TASK])


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
