"""Fuzzing the pass set with random attention graphs (`shadowattn_tvm.testing.fuzz`).

Every graph is compiled with TVM's plain pipeline and with `sat.pipeline` at keep 1.0 and 0.3:
* no graph TVM compiles may fail to compile with the pass set;
* keep 1.0 equals dense (rewritten or not), NaN for NaN; an fp16 rewrite further from dense than
  TOL may instead be within TOL of float64 attention, when the fp16 graph is further from it;
* keep 0.3 equals dense when the block stayed dense, else the top-k reference of the documented
  rule (`ops.topk`) ranked as the INT8 pilot ranks (within float rounding); its distance to the
  float64-ranked reference (INT8 swaps keys at the k-th boundary) is bounded by FLOAT_DRIFT_MAX
  and summarised over the run;
* near misses (not attention) stay dense;
* no block stays dense because of an internal error of a pass (the build survives it, the fuzzer
  reports it as the bug it is).
`python -m pytest -m fuzz --fuzz-count 1000` runs a campaign; the summary lists outcomes and reasons.
"""
from __future__ import annotations

import collections
import re

import numpy as np
import pytest

import shadowattn_tvm as sat
from shadowattn_tvm.testing.fuzz import random_case, to_canonical, topk_reference

from ..conftest import run_module

LOW_KEEP, K_MIN = 0.3, 2
TOL = {"float32": 1e-4, "float16": 1e-2}  # keep 1.0 vs dense, relative L2 (fp16: rounding of the fp16 graph)
FLOAT_DRIFT_MAX = 0.5  # keep 0.3 vs float-ranked top-k: INT8 ranking swaps boundary keys, never more
OUTCOMES: collections.Counter = collections.Counter()
DRIFT: list = []  # relative L2 of each rewritten low-keep output vs the float-ranked reference


def pytest_generate_tests(metafunc):
    if "fuzz_seed" in metafunc.fixturenames:
        first, count = metafunc.config.getoption("--fuzz-seed"), metafunc.config.getoption("--fuzz-count")
        metafunc.parametrize("fuzz_seed", range(first, first + count))


def _rel_err(got, want) -> float:
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return float("inf")
    ok = ~np.isnan(want)
    return float(np.linalg.norm(got[ok] - want[ok]) / max(np.linalg.norm(want[ok]), 1e-12))


def _reason(report) -> str:
    reasons = {c.reason for c in report.candidates if c.status != "rewritten"}
    return re.sub(r"-?\d[\d.e+-]*", "N", "; ".join(sorted(reasons)))[:90]  # numbers out: counts group by kind


@pytest.mark.fuzz
def test_random_attention_graph(fuzz_seed):
    case = random_case(fuzz_seed)
    dense = run_module(case.mod, case.inputs).astype(np.float64)
    for keep in (1.0, LOW_KEEP):
        report = sat.AttentionReport()
        try:
            got = run_module(case.mod, case.inputs, sat.pipeline(keep=keep, k_min=K_MIN, report=report))
        except Exception as err:  # noqa: BLE001 - counted, then failed
            OUTCOMES["failed compile", type(err).__name__] += 1
            raise AssertionError(f"{case.label()}: keep {keep} does not compile: {err}") from err
        got = got.astype(np.float64)
        rewritten = bool(report.rewritten)
        internal = [c.reason for c in report.candidates if c.reason.startswith("internal error")]
        if internal:  # the block stayed dense, as it must, but a pass of ours has a bug to fix
            OUTCOMES["internal error", internal[0][:60]] += 1
            raise AssertionError(f"{case.label()}: keep {keep}: {internal[0]}")
        if not case.attention:
            assert not rewritten, f"{case.label()}: a near miss was rewritten"
        if keep == 1.0 or not rewritten:
            err, tol, against = _rel_err(got, dense), TOL[case.desc["dtype"]], "dense"
            if rewritten and not err <= tol and case.desc["dtype"] == "float16":
                # the fp16 dense graph rounds unscaled scores of tens to fp16 before exp (~1 % off
                # exact attention); the rewrite computes them in fp32: judge it by the exact math
                exact = _rel_err(to_canonical(case, got), topk_reference(case, 1.0, K_MIN, "float"))
                if exact < err:
                    err, against = exact, "float64 attention (fp16 dense is further from it)"
                    OUTCOMES["fp16: closer to exact than dense", ""] += 1
        else:
            got = to_canonical(case, got)
            drift = _rel_err(got, topk_reference(case, keep, K_MIN, "float"))
            DRIFT.append(drift)
            err, tol, against = _rel_err(got, topk_reference(case, keep, K_MIN, "int8")), TOL[case.desc["dtype"]], \
                "INT8-ranked top-k reference"
            if err <= tol and not drift <= FLOAT_DRIFT_MAX:
                err, tol, against = drift, FLOAT_DRIFT_MAX, "float top-k reference"
        if not err <= tol:
            OUTCOMES["wrong output", f"keep {keep}"] += 1
            raise AssertionError(f"{case.label()}: keep {keep} ({'rewritten' if rewritten else 'dense'}) differs "
                                 f"from the {against}: relative L2 {err:.3g} > {tol}\n{report.table()}")
    OUTCOMES[("rewritten", "") if rewritten else ("dense", _reason(report))] += 1
