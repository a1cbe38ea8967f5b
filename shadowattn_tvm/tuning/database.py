"""A tuning database as compile reads it: ``tune_logs/<device>/``, checked, with shipped baselines.

MetaSchedule's JSON layout (``database_workload.json``, ``database_tuning_record.json``) plus our
``shipped_baseline.json``: per workload, the latency of the kernel compile uses without a
database (hand-written, or default-scheduled), measured by `tune` with the same runner as the
records. A tuned record is used only when its latency beats that baseline (`Choice.use_tuned`);
without a baseline (e.g. a database tuned elsewhere) the record is used and the choice says so.
"""
from __future__ import annotations

import json
from pathlib import Path

from .._compat import Schedule, meta_schedule, structural_hash, tirx, tvm
from ..ir_attrs import Choice
from .tasks import normalize, workload_module

WORKLOADS, RECORDS, BASELINE_FILE = "database_workload.json", "database_tuning_record.json", "shipped_baseline.json"
_INVALID_SECS = 1e9  # MetaSchedule writes 1e10 s for a failed run


class TuneLogsError(ValueError):
    """A tuning-log directory that cannot be used; the message names the fix."""


def workload_key(func: "tirx.PrimFunc") -> str:
    return str(structural_hash(workload_module(func)))


class TuningDatabase:
    """A checked MetaSchedule JSON database with the baselines `tune` measured."""

    def __init__(self, work_dir: str | Path, *, fix: str = "re-run `shadowattn tune`"):
        self.work_dir = Path(work_dir)
        if self.work_dir.exists() and not self.work_dir.is_dir():
            raise TuneLogsError(f"tuning logs {self.work_dir} is a file, not a directory: pass the directory "
                                f"`shadowattn tune` wrote (tune_logs/<device>, or its -o DIR)")
        if not self.work_dir.is_dir():
            raise TuneLogsError(f"tuning logs {self.work_dir} do not exist: {fix} to create them")
        missing = [name for name in (WORKLOADS, RECORDS) if not (self.work_dir / name).is_file()]
        if missing:
            raise TuneLogsError(f"tuning logs {self.work_dir} lack {', '.join(missing)} (MetaSchedule's JSON layout): "
                                f"{fix} with -o {self.work_dir}")
        _check_lines(self.work_dir, fix)
        try:
            self.db = meta_schedule().database.JSONDatabase(work_dir=str(self.work_dir), allow_missing=False)
        except Exception as err:  # noqa: BLE001 - TVM raises a bare error for records it cannot parse
            raise TuneLogsError(f"MetaSchedule cannot read the tuning logs in {self.work_dir} ({str(err).splitlines()[0]}):"
                                f" delete the directory and {fix}") from None
        self.baselines = _read_baselines(self.work_dir / BASELINE_FILE)

    def __len__(self) -> int:
        return len(self.db)

    def workloads(self) -> int:
        return sum(1 for line in (self.work_dir / WORKLOADS).read_text().splitlines() if line.strip())

    def _best_record(self, func: "tirx.PrimFunc"):
        mod = workload_module(func)
        if not self.db.has_workload(mod):
            return None
        for record in self.db.get_top_k(self.db.commit_workload(mod), 1):
            secs = [float(s) for s in record.run_secs or []]
            if secs and all(s < _INVALID_SECS for s in secs):
                return record
        return None

    def best_ms(self, func: "tirx.PrimFunc") -> float | None:
        """Best valid recorded latency of `func`'s workload in ms, or None (no workload or no valid record)."""
        record = self._best_record(func)
        return None if record is None else 1e3 * sum(float(s) for s in record.run_secs) / len(record.run_secs)

    def choice(self, name: str, func: "tirx.PrimFunc") -> Choice | None:
        """The record-vs-baseline choice for `func`, or None when the database has no valid record."""
        tuned = self.best_ms(func)
        if tuned is None:
            return None
        base = self.baselines.get(workload_key(func))
        return Choice(name, tuned, None if base is None else float(base["shipped_ms"]))

    def scheduled(self, func: "tirx.PrimFunc", target=None) -> "tirx.PrimFunc | None":
        """`func` scheduled by its best record (marked ``tirx.is_scheduled``), attributes kept.

        The trace is replayed on a deep copy: a Schedule may rewrite the functions of a module it
        holds the only reference to in place, which would change `func` (and the database's own
        workload) under the caller. `target` is unused: records are looked up by workload only.
        """
        record = self._best_record(func)
        if record is None:
            return None
        sch = Schedule(tvm.ir.load_json(tvm.ir.save_json(workload_module(func))))
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        out = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        symbol = func.attrs["global_symbol"] if func.attrs is not None and "global_symbol" in func.attrs else None
        return out.without_attr("global_symbol") if symbol is None else out.with_attr("global_symbol", symbol)

    def save_baseline(self, func: "tirx.PrimFunc", name: str, shipped_ms: float, kernel: str) -> None:
        self.baselines[workload_key(func)] = {"task": name, "shipped_ms": shipped_ms, "kernel": kernel}
        path = self.work_dir / BASELINE_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.baselines, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)


_OPENED: dict = {}  # resolved directory -> (its files' stats, TuningDatabase)


def open_database(work_dir: str | Path) -> TuningDatabase:
    """`TuningDatabase(work_dir)`, shared in this process while its three files are unchanged (same
    size and mtime): MetaSchedule parses a 2 MB database in ~3.5 s, and a compile reads it for its
    passes and again for lowering. Compile paths open it here; `tune` constructs its own (it writes)."""
    path = Path(work_dir).resolve()
    stats = []
    for name in (WORKLOADS, RECORDS, BASELINE_FILE):
        try:
            st = (path / name).stat()
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)
    key = tuple(stats)
    opened = _OPENED.get(path)
    if opened is None or opened[0] != key:
        opened = (key, TuningDatabase(work_dir))  # raises for unusable logs: nothing is kept
        _OPENED[path] = opened
    return opened[1]


def _workload_problem(line) -> str | None:
    ok = (isinstance(line, list) and len(line) == 2 and isinstance(line[0], str) and line[0].isdigit()
          and isinstance(line[1], str))
    return None if ok else "expected [structural hash, serialised workload]"


def _record_problem(line, workloads: int) -> str | None:
    # TuningRecord.AsJSON: [workload index, [trace, run_secs | null, target, args_info]]
    if not (isinstance(line, list) and len(line) == 2 and isinstance(line[1], list) and len(line[1]) == 4):
        return "expected [workload index, [trace, run_secs, target, args_info]]"
    index, (trace, run_secs, target, args_info) = line
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < workloads:
        return f"workload index {index!r} is not one of the {workloads} workloads"
    if not (isinstance(trace, list) and len(trace) == 2 and isinstance(trace[0], list)):
        return "the trace is not [instructions, decisions]"
    if run_secs is not None and not (isinstance(run_secs, list) and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in run_secs)):
        return "run_secs is not a list of seconds"
    if not isinstance(target, dict) or not isinstance(target.get("kind"), str) or not isinstance(args_info, list):
        return "the target is not a target dict or args_info is not a list"
    return None


def _check_lines(work_dir: Path, fix: str) -> None:
    """Check every line's JSON and layout before MetaSchedule parses them: TVM segfaults on some
    well-formed JSON that is not a record (e.g. ``{"a": "b"}``)."""
    workloads = 0
    for name in (WORKLOADS, RECORDS):
        for number, text in enumerate((work_dir / name).read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as err:
                problem = f"is not JSON ({err.msg})"
            else:
                problem = _workload_problem(line) if name == WORKLOADS else _record_problem(line, workloads)
                kind = "workload" if name == WORKLOADS else "tuning record"
                problem = None if problem is None else f"is not a MetaSchedule {kind} ({problem})"
            if problem is not None:
                raise TuneLogsError(f"{work_dir / name}:{number} {problem}: delete the directory and {fix}, "
                                    "or remove the broken line")
            workloads += name == WORKLOADS


def _read_baselines(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, dict) and "shipped_ms" in v for v in data.values()):
            raise ValueError("expected {workload hash: {task, shipped_ms, kernel}}")
        return data
    except ValueError as err:
        raise TuneLogsError(f"{path} is malformed ({err}): delete it and re-run `shadowattn tune` to re-measure "
                            "the shipped kernels") from None


__all__ = ["TuningDatabase", "TuneLogsError", "Choice", "workload_key", "normalize", "BASELINE_FILE"]
