"""Shared helpers: compile a Relax module for the host and run its `main`."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tvm
from tvm import relax

from shadowattn_tvm import targets

HOST = targets.get("host").cpu


def pytest_configure(config):
    """Under pytest-xdist (the default run: ``-n 2`` in pyproject.toml) each worker process gets
    one TVM thread, so two workers on two cores do not spin each other's thread pools; the first
    kernel starts the pool, after this."""
    if hasattr(config, "workerinput"):
        os.environ["TVM_NUM_THREADS"] = "1"


#: The longest test files (minutes on two workers, from ``--durations``), longest first. xdist's
#: ``--dist loadfile`` hands out files in order of their test count, so files of one or two long
#: tests (tuning, deploy, tracing) came last and one worker ran them alone at the end.
HEAVY_FIRST = ("runtime/test_emulated_phone.py", "runtime/test_trace.py", "frontend/test_gguf.py", "passes/test_fuzz.py",
               "runtime/test_deploy.py", "frontend/test_models_cli.py", "passes/test_pipeline_heads.py",
               "passes/test_bucket_pilot.py", "runtime/test_tune_faults.py", "test_cli.py", "runtime/test_npu_service.py",
               "calibrate/test_calibrate.py", "test_generation.py", "runtime/test_emulated_kernels.py")


def _rank(path: str) -> int:
    path = path.removeprefix("tests/")
    return HEAVY_FIRST.index(path) if path in HEAVY_FIRST else len(HEAVY_FIRST)


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the files of HEAVY_FIRST handed out first (the rest in xdist's order)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class HeavyFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            if not getattr(self, "_ordered", False):  # the first assignment: the queue is complete
                self._ordered = True
                units = sorted(self.workqueue.items(), key=lambda unit: _rank(unit[0]))  # stable
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return HeavyFirst(config, log)


def pytest_addoption(parser):
    parser.addoption("--fuzz-count", type=int, default=12, help="random attention graphs the fuzz test draws")
    parser.addoption("--fuzz-seed", type=int, default=0, help="first seed of the fuzz test's graphs")


def pytest_sessionfinish(session):
    """An xdist worker hands its fuzz outcomes to the controller, which prints the summary."""
    if hasattr(session.config, "workeroutput"):
        from .passes.test_fuzz import DRIFT, OUTCOMES

        session.config.workeroutput["fuzz"] = {"outcomes": [[*key, n] for key, n in OUTCOMES.items()], "drift": DRIFT}


def pytest_testnodedown(node, error):
    from .passes.test_fuzz import DRIFT, OUTCOMES

    data = getattr(node, "workeroutput", {}).get("fuzz")
    if data:
        for outcome, reason, count in data["outcomes"]:
            OUTCOMES[outcome, reason] += count
        DRIFT.extend(data["drift"])


def pytest_terminal_summary(terminalreporter):
    from .passes.test_fuzz import DRIFT, OUTCOMES

    if OUTCOMES:
        terminalreporter.write_sep("-", f"fuzz: {sum(OUTCOMES.values())} graphs")
        for (outcome, reason), count in sorted(OUTCOMES.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{count:5d}  {outcome}{': ' + reason if reason else ''}")
        if DRIFT:
            d = sorted(DRIFT)
            terminalreporter.write_line(f"low keep vs float-ranked top-k (rel. L2, INT8 ranking effect): median "
                                        f"{d[len(d) // 2]:.3g}, 95th pct {d[int(0.95 * (len(d) - 1))]:.3g}, max {d[-1]:.3g}")


def run_module(mod_or_ex, inputs, relax_pipeline="default"):
    ex = mod_or_ex if not isinstance(mod_or_ex, tvm.IRModule) else tvm.compile(
        mod_or_ex, target=HOST, relax_pipeline=relax_pipeline)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs]).numpy()


def build_prim(func):
    if func.attrs is None or "global_symbol" not in func.attrs:
        func = func.with_attr("global_symbol", "main")  # the passes name kernels; alone it needs one
    return tvm.compile(func, target=HOST)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
