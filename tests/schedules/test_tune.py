"""MetaSchedule tuning on this machine: records in MetaSchedule's layout, resume, tuned vs untuned.

~1-2 min, mostly MetaSchedule's fixed start-up: its TuneContext imports every tensor intrinsic
(`tvm.s_tir.tensor_intrin`, ~30 s of CPU), once per process.
"""
import json

import pytest

from shadowattn_tvm.schedules.tune import TASKS, best_latency_ms, compare_on_host, tune
from shadowattn_tvm.targets import get

pytestmark = pytest.mark.slow
TOKENS = 64
quiet = dict(log=lambda _msg: None)


def test_tune_writes_records_and_resumes(tmp_path):
    work = tmp_path / "tune_logs" / "host"
    first = tune("host", trials=3, tokens=TOKENS, work_dir=work, **quiet)
    assert sorted(p.name for p in work.iterdir() if p.suffix == ".json") == [
        "database_tuning_record.json", "database_workload.json"]
    assert first.records == 3 and first.best_ms["sparse_attention"] > 0
    assert len((work / "database_workload.json").read_text().splitlines()) == 1
    assert all(len(json.loads(line)) == 2 for line in (work / "database_tuning_record.json").read_text().splitlines())

    second = tune("host", trials=1, tokens=TOKENS, work_dir=work, **quiet)  # an interrupted run resumes from disk
    assert second.records == 4
    task = TASKS["sparse_attention"](TOKENS, 0.2, 16)
    assert best_latency_ms(work, task, get("host")) <= first.best_ms["sparse_attention"]

    row = compare_on_host(work, tokens=TOKENS)
    assert row["tuned_ms"] is not None and row["untuned_ms"] > 0


def test_phone_needs_an_endpoint_and_tasks_are_checked(tmp_path):
    with pytest.raises(ValueError, match="give an RPC tracker endpoint"):
        tune("snapdragon-8gen3", trials=1, work_dir=tmp_path, **quiet)
    with pytest.raises(ValueError, match="unknown tuning tasks"):
        tune("host", tasks=("topk9",), trials=1, work_dir=tmp_path, **quiet)
