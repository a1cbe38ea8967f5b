"""Phase 5 (`passes/lowering.py`): TVM's CPU stages with fusion, our kernels kept whole, each
kernel scheduled once; numerics equal to the unfused lowering and to numpy."""
from __future__ import annotations

import numpy as np
import pytest
import tvm

import shadowattn_tvm as sat
from shadowattn_tvm._compat import tirx
from shadowattn_tvm.frontend import GGUFSource, ModelRunner
from shadowattn_tvm.passes.lowering import OPAQUE, cpu_stages, legalize_stages
from shadowattn_tvm.targets import get
from shadowattn_tvm.testing import tiny_llama

HOST = get("host").cpu
TOKENS = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    weights = tiny_llama.write_tiny_gguf(path)
    return ModelRunner(GGUFSource(path)), weights


def _prim_funcs(mod) -> dict:
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}


def test_fusion_runs_and_our_kernels_stay_whole(tiny):
    runner, _ = tiny
    mod = runner.source.export(TOKENS).mod
    with HOST:
        ir = sat.pipeline(keep=0.5, lower=False)(mod)
        legalized = tvm.transform.Sequential(legalize_stages(HOST))(ir)
    kernels = _prim_funcs(legalized)
    assert any(name.startswith("fused_") for name in kernels), sorted(kernels)  # FuseOps/FuseTIR ran
    ours = {name: f for name, f in kernels.items() if name.startswith("sat_")}
    assert {"sat_topk", "sat_sparse_attention"} <= {n.rstrip("0123456789") for n in ours}
    assert all(int(f.attrs["op_pattern"]) == OPAQUE for f in ours.values())
    assert not any("sat_" in name for name in kernels if name.startswith("fused_"))  # never fused into another


def test_every_kernel_is_scheduled_exactly_once(tiny):
    runner, _ = tiny
    mod = runner.source.export(TOKENS).mod
    stages = cpu_stages(HOST)
    schedule = next(i for i, p in enumerate(stages) if p.info.name == "ScheduleDefaultCPU")
    with HOST:
        ir = sat.pipeline(keep=0.5, lower=False)(mod)
        scheduled = tvm.transform.Sequential(stages[: schedule + 1])(ir)
    unscheduled = [n for n, f in _prim_funcs(scheduled).items() if "tirx.is_scheduled" not in f.attrs]
    assert unscheduled == []


def test_fused_lowering_matches_unfused_and_numpy(tiny):
    runner, weights = tiny
    ids = np.random.default_rng(3).integers(3, 200, TOKENS)
    unfused_names = {"KeepKernelsWhole", "AnnotateTIROpPattern", "FoldConstant", "FuseOps", "FuseTIR"}

    @tvm.transform.module_pass(opt_level=0, name="Unfused")
    def unfused(m, _ctx):
        return tvm.transform.Sequential([p for p in cpu_stages(HOST) if p.info.name not in unfused_names])(m)

    fused = runner.compile(TOKENS, sat.lowering())(ids)
    np.testing.assert_allclose(fused, runner.compile(TOKENS, unfused)(ids), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused, tiny_llama.numpy_forward(weights, ids), rtol=2e-4, atol=2e-4)


def test_a_lane_without_relax_lowering_is_a_clear_error():
    mod = tvm.IRModule()
    with pytest.raises(ValueError, match="hexagon lane is not a Relax target.*device's CPU target"):
        sat.lowering(target=get("snapdragon-8gen3").npu)(mod)
