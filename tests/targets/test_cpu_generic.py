"""The default CPU rules (`targets/cpu_generic.py`, `targets/cpu_fast_math.py`): numerics of
the scheduled kernels against numpy (odd, batched, transposed, symbolic and fused shapes), the
plan they pick per vector ISA, and the vector code they give on x86 and aarch64."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm

from shadowattn_tvm._compat import R, T, relax, te, tirx
from shadowattn_tvm.passes.lowering import cpu_stages, legalize_stages
from shadowattn_tvm.targets import cpu_fast_math, get
from shadowattn_tvm.targets.cpu_generic import schedule_default
from shadowattn_tvm.targets.cpu_matmul_plan import CoreShape, plan_matmul

HOST = get("host").cpu
NEON = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


def _matmul(a_shape, b_shape, transpose_b=False):
    """C = A @ B (or A @ B^T) as legalization writes it: loops (batch.., i, j, k)."""
    a_shape, b_shape = ([tirx.IntImm("int64", d) if isinstance(d, int) else d for d in s] for s in (a_shape, b_shape))
    A, B = te.placeholder(a_shape, name="A"), te.placeholder(b_shape, name="B")  # int64 dims, as legalized
    K = a_shape[-1]
    k = te.reduce_axis((0, K), name="k")
    n = b_shape[-2] if transpose_b else b_shape[-1]
    batch = a_shape[:-2]

    def body(*ix):
        *bt, i, j = ix
        b_batch = bt[len(bt) - (len(b_shape) - 2):] if len(b_shape) > 2 else []
        b_val = B[(*b_batch, j, k)] if transpose_b else B[(*b_batch, k, j)]
        return te.sum(A[(*bt, i, k)] * b_val, axis=k)

    C = te.compute((*batch, a_shape[-2], n), body, name="matmul")
    return te.create_prim_func([A, B, C]).with_attr("global_symbol", "main")


def _run(func, inputs, out_shape, target=HOST):
    rt = tvm.compile(schedule_default(func, target), target=target)
    args = [tvm.runtime.tensor(x) for x in inputs] + [tvm.runtime.empty(out_shape, "float32", tvm.cpu())]
    for _ in range(3):  # repeated runs: a race between the threads would show as a changing result
        rt(*args)
    return args[-1].numpy()


@pytest.mark.parametrize("a_shape,b_shape,transpose_b", [
    ((64, 48), (48, 96), False),              # exact register blocks
    ((37, 33), (33, 100), False),             # prime rows, width not a multiple of the lanes
    ((24, 17), (17, 50), False),              # every dimension odd-ish
    ((1, 40, 64), (64, 72), False),           # batch in A only (the model's linear layers)
    ((2, 3, 16, 32), (2, 3, 32, 24), False),  # batched both sides (attention's P @ V)
    ((3, 20, 16), (3, 40, 16), True),         # B transposed (Q @ K^T with K stored [n, d])
    ((1, 5), (5, 7), False),                  # a single row (decode-like)
])
def test_scheduled_matmul_matches_numpy(a_shape, b_shape, transpose_b, rng):
    a = rng.standard_normal(a_shape).astype("float32")
    b = rng.standard_normal(b_shape).astype("float32")
    want = a @ (np.swapaxes(b, -1, -2) if transpose_b else b)
    got = _run(_matmul(a_shape, b_shape, transpose_b), [a, b], want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_matmul_with_symbolic_rows_falls_back_to_a_correct_kernel(rng):
    m = tirx.Var("m", "int64")
    func = _matmul((m, 24), (24, 32))
    rt = tvm.compile(schedule_default(func, HOST), target=HOST)
    for rows in (5, 16):
        a = rng.standard_normal((rows, 24)).astype("float32")
        b = rng.standard_normal((24, 32)).astype("float32")
        c = tvm.runtime.empty((rows, 32), "float32", tvm.cpu())
        rt(tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
        np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-4, atol=1e-4)


def test_large_matmul_is_packed_register_blocked_and_parallel():
    scheduled = schedule_default(_matmul((1, 256, 64), (64, 192)), AVX2).script()
    assert "T.parallel" in scheduled and "T.vectorized" in scheduled
    # B packed per task into [columns / 24, k, 24]: contiguous micro-panels for the 4 x 24 block
    assert "B_global = T.sblock_alloc_buffer((T.int64(8), T.int64(64), T.int64(24)))" in scheduled
    assert 'scope="local"' in scheduled  # the accumulator tile


def test_every_matmul_of_a_llama_gets_the_register_blocked_rule(tmp_path):
    from shadowattn_tvm.frontend.source import open_model
    from shadowattn_tvm.testing import tiny_llama

    mod = open_model(tiny_llama.tiny_gguf_path(tmp_path)).export(40).mod
    with HOST:
        fused = tvm.transform.Sequential(legalize_stages(HOST))(mod)
    matmuls = {gv.name_hint: f for gv, f in fused.functions.items()
               if isinstance(f, tirx.PrimFunc) and "matmul" in gv.name_hint}
    assert len(matmuls) >= 6, sorted(matmuls)
    for name, func in matmuls.items():  # a silent fallback to the outer-parallel rule would show here
        scheduled = schedule_default(func.with_attr("global_symbol", "main"), HOST).script()
        assert 'scope="local"' in scheduled and "T.parallel" in scheduled, name
        width = int(func.params[-1].ty.shape[-1])  # the tiny vocabulary (263) is prime: scalar columns
        assert ("T.vectorized" in scheduled) == (width % 2 == 0), name


def _fused_program(n, d, f):
    """x @ Wg -> silu, times x @ Wu, then @ Wd plus the residual: SwiGLU's fused kernels."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((1, n, d), "float32"))
    wg, wu = (relax.Var(name, R.Tensor((d, f), "float32")) for name in ("wg", "wu"))
    wd = relax.Var("wd", R.Tensor((f, d), "float32"))
    with bb.function("main", [x, wg, wu, wd]):
        with bb.dataflow():
            h = bb.emit(R.multiply(R.nn.silu(R.matmul(x, wg)), R.matmul(x, wu)))
            out = bb.emit_output(R.add(R.matmul(h, wd), x))
        bb.emit_func_output(out)
    return bb.get()


def test_fused_matmul_epilogues_match_numpy_and_are_inlined(rng):
    n, d, f = 48, 32, 80
    mod = _fused_program(n, d, f)
    x, wg, wu = (rng.standard_normal(s).astype("float32") * 0.3 for s in ((1, n, d), (d, f), (d, f)))
    wd = rng.standard_normal((f, d)).astype("float32") * 0.3
    ex = tvm.compile(mod, target=HOST, relax_pipeline=tvm.transform.Sequential(cpu_stages(HOST)))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](*[tvm.runtime.tensor(v) for v in (x, wg, wu, wd)]).numpy()
    g = x @ wg
    np.testing.assert_allclose(got, (g / (1 + np.exp(-g)) * (x @ wu)) @ wd + x, rtol=1e-4, atol=1e-4)

    with HOST:
        fused = tvm.transform.Sequential(legalize_stages(HOST))(mod)
    kernels = {gv.name_hint: f for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc)}
    silu = next(f for name, f in kernels.items() if "silu" in name and "matmul" in name)
    scheduled = schedule_default(silu.with_attr("global_symbol", "main"), HOST).script()
    # the epilogue is computed in the accumulator's write-back: no full-size intermediate is left,
    # and sigmoid is plain arithmetic (vectorisable)
    assert "T.sigmoid" not in scheduled and "T.exp" not in scheduled
    full = re.findall(r"(\w+) = T.sblock_alloc_buffer\(\(T.int64\(1\), T.int64\(48\), T.int64\(80\)\)\)", scheduled)
    assert full == [], full


def _row_program(n, d):
    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((2, n, d), "float32"))
    w = relax.Var("w", R.Tensor((d,), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(R.nn.softmax(R.nn.rms_norm(x, w, axes=[-1], epsilon=1e-5), axis=-1))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("d", [64, 37])
def test_row_kernels_match_numpy(d, rng):
    x = rng.standard_normal((2, 24, d)).astype("float32") * 3
    w = rng.standard_normal(d).astype("float32")
    ex = tvm.compile(_row_program(24, d), target=HOST, relax_pipeline=tvm.transform.Sequential(cpu_stages(HOST)))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w)).numpy()
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w
    e = np.exp(y - y.max(-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_softmax_runs_row_by_row_with_vector_reductions():
    with HOST:
        fused = tvm.transform.Sequential(legalize_stages(HOST))(_row_program(24, 64))
    softmax = next(f for gv, f in fused.functions.items() if "softmax" in gv.name_hint)
    scheduled = schedule_default(softmax.with_attr("global_symbol", "main"), AVX2).script()
    assert scheduled.count("T.parallel") == 1  # one loop over rows, every step inside it
    assert "_rf_update" in scheduled and "T.exp" not in scheduled


def test_fast_exp_is_within_two_ulp_of_numpy():
    x = np.concatenate([np.linspace(-87.3, 88.3, 20001), [-np.inf, -100.0, 0.0, 100.0, np.inf]]).astype("float32")
    A = te.placeholder((x.size,), name="A")
    B = te.compute((x.size,), lambda i: te.exp(A[i]), name="B")
    func = te.create_prim_func([A, B]).with_attr("global_symbol", "main")
    got = _run(func, [x], x.shape)
    want = np.exp(x.astype(np.float64))
    finite = np.abs(x) < 88
    np.testing.assert_allclose(got[finite], want[finite], rtol=2.5e-7, atol=0)
    assert list(got[-5:]) == [0.0, 0.0, 1.0, np.inf, np.inf]
    assert cpu_fast_math.calls(cpu_fast_math.fast_exp(tirx.Var("v", "float32"))) <= {"tirx.floor", "tirx.reinterpret"}


@pytest.mark.parametrize("target,lanes,registers", [(AVX2, 8, 16), (AVX512, 16, 32), (NEON, 4, 32)])
def test_vector_isa_comes_from_the_target(target, lanes, registers):
    isa = CoreShape.of(target)
    assert (isa.lanes, isa.registers) == (lanes, registers)
    plan = plan_matmul(512, 1536, 576, 1, isa)
    assert plan.lanes == lanes and 512 % plan.mr == 0 and 1536 % plan.nr == 0
    assert plan.mr * plan.nv + plan.nv + 1 <= registers  # accumulators, B vectors, one broadcast
    assert plan.pack


def test_plan_balances_tasks_over_the_cores():
    isa = CoreShape(lanes=8, registers=16, threads=2)
    for m, n, k, batch in ((512, 576, 576, 1), (2048, 192, 576, 1), (512, 64, 512, 9), (512, 512, 64, 9)):
        plan = plan_matmul(m, n, k, batch, isa)
        tasks = batch * (m // plan.mr // plan.rows) * (n // plan.nr // plan.cols)
        assert tasks >= 8 and (tasks % 2 == 0 or tasks >= 32), (m, n, k, batch, plan)
    odd = plan_matmul(7, 5, 3, 1, isa)  # exact blocks over vector width: 7 rows, scalar columns
    assert (odd.mr, odd.lanes, odd.pack) == (7, 1, False)


def _asm(func, target):
    return tvm.compile(schedule_default(func, target), target=target).mod.inspect_source("asm")


def test_aarch64_build_vectorises_with_neon():
    asm = _asm(_matmul((1, 64, 48), (48, 96)), NEON)
    assert len(re.findall(r"fmla\s+v\d+\.4s", asm)) >= 16


def test_x86_builds_use_the_targets_vector_width():
    func = _matmul((1, 64, 48), (48, 96))
    assert re.search(r"vfmadd\w+\s+.*zmm", _asm(func, AVX512))
    avx2 = _asm(func, AVX2)
    assert re.search(r"vfmadd\w+\s+.*ymm", avx2) and not re.search(r"zmm", avx2)
