"""Tuning against a device that goes away: one clear error, every measured record kept, resume adds
to them.

One MetaSchedule run (~1-2 min: its start-up and the bounded re-connects after the kill).
"""
import json
import os
import signal
import threading
import time

import pytest

from shadowattn_tvm.runtime.rpc_session import Endpoint, RPCUnavailable
from shadowattn_tvm.targets import get
from shadowattn_tvm.tuning.database import BASELINE_FILE, TuningDatabase
from shadowattn_tvm.tuning.driver import SPARSE_TASK, compare_on_host, tune
from shadowattn_tvm.tuning.tasks import model_tasks

pytestmark = pytest.mark.slow
quiet = dict(log=lambda _msg: None)
FAILED = 1e10  # MetaSchedule's run time of a failed trial


def _records(work):
    path = work / "database_tuning_record.json"
    return path.read_text().splitlines() if path.exists() else []


def _run_secs(line):
    return [float(s) for s in json.loads(line)[1][1] or []]


def _kill_after_first_records(state, work, stop):
    while not stop.is_set():
        if _records(work):
            os.killpg(state.server.pid, signal.SIGKILL)
            return
        time.sleep(0.2)


def test_tuning_stops_cleanly_when_the_server_dies_and_resumes(doomed_host_phone, tmp_path):
    work = tmp_path / "tune_logs"
    endpoint = Endpoint(doomed_host_phone.host, doomed_host_phone.tracker_port, doomed_host_phone.key)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_after_first_records, args=(doomed_host_phone, work, stop))
    killer.start()
    try:
        with pytest.raises(RPCUnavailable) as info:
            tune("host", tasks=(SPARSE_TASK,), trials=24, trials_per_iter=4, tokens=32, work_dir=work,
                 endpoint=endpoint, timeout=20, **quiet)
    finally:
        stop.set()
        killer.join()
    message = str(info.value)
    assert message.startswith("tuning stopped: ") and "\n" not in message
    assert f"records measured so far are kept in {work}: re-run the same command to resume" in message
    assert not doomed_host_phone.server.alive() and doomed_host_phone.tracker.alive()

    kept = _records(work)
    assert kept, "no record was measured before the kill"
    assert len(kept) < 24 and f"the {len(kept)} records" in message  # stopped early, and says how many
    # trials that failed only because the device went away are not recorded as failures
    assert all(FAILED not in _run_secs(line) for line in kept)

    resumed = tune("host", tasks=(SPARSE_TASK,), trials=2, trials_per_iter=2, tokens=32, work_dir=work, **quiet)
    assert resumed.records == len(kept) + 2 and _records(work)[:len(kept)] == kept
    assert resumed.best_ms[SPARSE_TASK] > 0 and resumed.shipped_ms[SPARSE_TASK] > 0
    # MetaSchedule's layout: one workload, [workload, record] lines; the shipped baseline measured once
    assert sorted(p.name for p in work.iterdir() if p.suffix == ".json") == [
        "database_tuning_record.json", "database_workload.json", BASELINE_FILE]
    assert len((work / "database_workload.json").read_text().splitlines()) == 1
    assert all(len(json.loads(line)) == 2 for line in _records(work))
    baseline = json.loads((work / BASELINE_FILE).read_text())
    assert [(v["task"], v["kernel"]) for v in baseline.values()] == [(SPARSE_TASK, "hand-written")]
    rows = compare_on_host(work, tokens=32, repeat=2)  # tuned vs shipped, side by side on this machine
    assert [r["task"] for r in rows] == [SPARSE_TASK] and rows[0]["tuned_ms"] > 0 and rows[0]["shipped_ms"] > 0
    choice = TuningDatabase(work).choice(SPARSE_TASK, model_tasks("default", 32, 0.2, 16, get("host").cpu)[0].func)
    assert choice.shipped_ms == pytest.approx(resumed.shipped_ms[SPARSE_TASK])
