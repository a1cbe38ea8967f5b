"""Tuning logs in the pipeline: records win only where they beat the shipped kernel; bad logs are named.

Uses hand-made records (`tests.tuning_helpers`), no tuning run: a few seconds per test.
"""
import json
import os

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax

from shadowattn_tvm.builder.models import get_model, make_inputs
from shadowattn_tvm.builder.options import BuildOptions, compile_model
from shadowattn_tvm.passes import pipeline
from shadowattn_tvm.ir_attrs import TUNING, tuning_choices
from shadowattn_tvm.passes.use_tunable_kernels import UseTunableKernels, swap_to_tunable
from shadowattn_tvm.tuning.database import BASELINE_FILE, TuneLogsError, TuningDatabase, open_database

from ..tuning_helpers import TAG, TARGET, fake_tune_logs

TOKENS = 32


def _lowered(tune_logs=None):
    """(the lowered module, what the database did: `ir_attrs.tuning_choices` of it)."""
    with TARGET:
        mod = pipeline(keep=0.2, tune_logs=tune_logs)(get_model("default", TOKENS).mod)
    return mod, tuning_choices(mod)


def _run(tune_logs=None):
    built = get_model("default", TOKENS)
    options = BuildOptions(keep=0.2, tune_logs=None if tune_logs is None else str(tune_logs))
    vm = relax.VirtualMachine(compile_model(built.mod, TARGET, options), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in make_inputs(built.inputs)]).numpy()


def test_record_faster_than_shipped_swaps_in_the_tuned_sparse_kernel(tmp_path):
    logs = fake_tune_logs(tmp_path / "host", TOKENS, tuned_ms=0.01, shipped_ms=1.0,
                          names=("sparse_attention", "transpose"))
    mod, t = _lowered(logs)
    names = {gv.name_hint for gv in mod.get_global_vars()}
    assert "sat_sparse_attention_te" in names and "sat_sparse_attention" not in names
    for kernel in ("sat_sparse_attention_te", "transpose"):  # the record's trace, not a default schedule
        assert TAG in mod[kernel].script()
    assert TAG not in mod["transpose1"].script()  # no record: the default schedule fills in
    assert [(c.name, c.use_tuned) for c in t.choices] == [("sat_sparse_attention_te", True),
                                                                 ("transpose", True)]
    assert t.tunable == 4
    np.testing.assert_allclose(_run(logs), _run(None), rtol=1e-5, atol=1e-5)


def test_shipped_kernel_faster_than_record_is_kept(tmp_path):
    logs = fake_tune_logs(tmp_path / "host", TOKENS, tuned_ms=5.0, shipped_ms=1.0,
                          names=("sparse_attention", "transpose"))
    tuned, t = _lowered(logs)
    untuned, _ = _lowered(None)
    assert [(c.name, c.use_tuned) for c in t.choices] == [("sat_sparse_attention (tunable form)", False),
                                                                 ("transpose", False)]
    assert t.tunable == 4 and "shipped kept" in t.choices[0].describe()
    assert tvm_ffi.structural_equal(tuned.without_attr(TUNING), untuned)  # only the record of what was kept


def test_without_logs_nothing_changes_and_mismatched_logs_warn(tmp_path):
    with_none, t = _lowered(None)
    assert t is None
    logs = fake_tune_logs(tmp_path / "host", 48, tuned_ms=0.01, shipped_ms=1.0)  # another length
    mismatched, t = _lowered(logs)
    assert t.choices == () and tvm_ffi.structural_equal(with_none, mismatched.without_attr(TUNING))
    lines = []
    compile_model(get_model("default", TOKENS).mod, TARGET, BuildOptions(keep=0.2, tune_logs=str(logs)),
                  log=lines.append)
    assert "0 of 4 tunable kernels have records" in lines[-2]
    assert "matches none of this build's kernels" in lines[-1] and "re-run `shadowattn tune`" in lines[-1]


def test_record_without_baseline_is_used(tmp_path):
    logs = fake_tune_logs(tmp_path / "host", TOKENS, tuned_ms=50.0, shipped_ms=None)
    _, t = _lowered(logs)
    assert [(c.shipped_ms, c.use_tuned) for c in t.choices] == [(None, True)]
    assert "no baseline" in t.choices[0].describe()


def test_unusable_logs_name_the_fix(tmp_path):
    with pytest.raises(TuneLogsError, match="do not exist.*shadowattn tune"):
        TuningDatabase(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("")
    with pytest.raises(TuneLogsError, match=r"^tuning logs \S+afile is a file, not a directory: pass the directory "
                                            r"`shadowattn tune` wrote"):
        TuningDatabase(tmp_path / "afile")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TuneLogsError, match="lack database_workload.json, database_tuning_record.json"):
        pipeline(tune_logs=empty)
    logs = fake_tune_logs(tmp_path / "host", TOKENS, tuned_ms=0.01, shipped_ms=1.0)
    records = logs / "database_tuning_record.json"
    good = records.read_text()
    records.write_text(good + "[0, [[[\n")
    with pytest.raises(TuneLogsError, match=r"database_tuning_record.json:2 is not JSON.*remove the broken line"):
        TuningDatabase(logs)
    records.write_text("[7, [[[], []], [1.0], {\"kind\": \"llvm\"}, []]]\n")  # a workload the file lacks
    with pytest.raises(TuneLogsError, match="tuning_record.json:1 is not a MetaSchedule tuning record "
                                            r"\(workload index 7 is not one of the 1 workloads\)"):
        TuningDatabase(logs)
    records.write_text('[0, [[[["NoSuchInstruction", [], [], []]], []], [1.0], {"kind": "llvm"}, []]]\n')
    with pytest.raises(TuneLogsError, match="MetaSchedule cannot read .*delete the directory"):  # laid out right
        TuningDatabase(logs)
    records.write_text(good)
    (logs / BASELINE_FILE).write_text(json.dumps({"1": {"task": "x"}}))
    with pytest.raises(TuneLogsError, match="malformed.*re-measure"):
        TuningDatabase(logs)



def test_compiles_share_an_opened_database_until_its_files_change(tmp_path):
    logs = fake_tune_logs(tmp_path / "host", TOKENS, tuned_ms=0.01, shipped_ms=1.0)
    first = open_database(logs)
    assert open_database(str(logs)) is first and BuildOptions(tune_logs=str(logs)).database() is first
    baseline = logs / BASELINE_FILE  # `tune` rewrites it: the next compile reads the directory again
    later = baseline.stat().st_mtime_ns + 10 ** 9
    os.utime(baseline, ns=(later, later))
    second = open_database(logs)
    assert second is not first and open_database(logs) is second and len(second) == len(first)
    records = logs / "database_tuning_record.json"
    good = records.read_text()
    records.write_text(good + "[0, [[[\n")
    with pytest.raises(TuneLogsError, match="not JSON"):  # broken logs are named, never served from before
        open_database(logs)
    records.write_text(good)
    assert open_database(logs) is not second


def test_use_tunable_kernels_swaps_every_sparse_call_when_extracting():
    with TARGET:
        mod = pipeline(keep=0.2, lower=False)(get_model("default", TOKENS).mod)
    out, swapped = swap_to_tunable(mod)
    assert len(swapped) == 1 and tvm_ffi.structural_equal(UseTunableKernels()(mod), out)
    hand, te = swapped[0]
    assert "tirx.is_scheduled" in hand.attrs and te.attrs is None or "tirx.is_scheduled" not in te.attrs
    assert {gv.name_hint for gv in out.get_global_vars()} >= {"sat_sparse_attention_te"}
    assert "sat_sparse_attention" not in {gv.name_hint for gv in out.get_global_vars()}
    kept, none = swap_to_tunable(mod, lambda _f: False)  # a record that loses
    assert tvm_ffi.structural_equal(kept, mod) and none == []


# JSON that is not a record: TVM's parser segfaulted on the first one; each must be named instead
_NOT_RECORDS = ['{"a": "b"}', '"text"', "42", "null", "[]", '[0, {"a": 1}]', '[0, [1, 2, 3]]',
                '[true, [[[], []], [1.0], {"kind": "llvm"}, []]]', '[0, [{"x": 1}, [1.0], {"kind": "llvm"}, []]]',
                '[0, [[[], []], ["fast"], {"kind": "llvm"}, []]]', '[0, [[[], []], [1.0], "llvm", []]]',
                '[0, [[[], []], [1.0], {"kind": "llvm"}, {}]]']


@pytest.mark.parametrize("line", _NOT_RECORDS)
def test_json_that_is_not_a_record_is_named_not_parsed(tmp_path, line):
    logs = fake_tune_logs(tmp_path / "host", TOKENS, tuned_ms=0.01, shipped_ms=1.0)
    records = logs / "database_tuning_record.json"
    records.write_text(records.read_text() + line + "\n")
    with pytest.raises(TuneLogsError, match=r"database_tuning_record.json:2 is not a MetaSchedule tuning record .*"
                                            "delete the directory"):
        pipeline(tune_logs=logs)


@pytest.mark.parametrize("line", ['{"a": "b"}', '["123"]', '["abc", "x"]', '[123, "x"]'])
def test_json_that_is_not_a_workload_is_named_not_parsed(tmp_path, line):
    logs = fake_tune_logs(tmp_path / "host", TOKENS, tuned_ms=0.01, shipped_ms=1.0)
    workloads = logs / "database_workload.json"
    workloads.write_text(line + "\n" + workloads.read_text())
    with pytest.raises(TuneLogsError, match=r"database_workload.json:1 is not a MetaSchedule workload"):
        TuningDatabase(logs)
