"""Kernel generators are memoised: layers of one shape share a PrimFunc, other ISAs or shapes do not."""
from dataclasses import replace

from shadowattn_tvm.ops import _isa, sparse_attention, topk
from shadowattn_tvm.testing import AttentionSpec
from shadowattn_tvm._compat import tirx


def test_layers_share_kernels_and_isas_and_shapes_do_not():
    block = AttentionSpec(q_len=32, head_dim=16).block()
    first = topk.topk_indices(block, 4, isa=_isa.AVX2)
    assert topk.topk_indices(replace(block, layer=7), 4, isa=_isa.AVX2) is first
    assert topk.topk_indices(block, 4, isa=_isa.NEON) is not first
    assert topk.topk_indices(block, 5, isa=_isa.AVX2) is not first
    shape = [1, block.num_heads, 32, 16]
    sparse = sparse_attention.sparse_attention(block, shape, 32, 16, 8, isa=_isa.AVX2)
    assert sparse_attention.sparse_attention(block, [tirx.IntImm("int64", d) for d in shape], 32, 16, 8,
                                             isa=_isa.AVX2) is sparse  # static dims as IntImm or int
    assert sparse_attention.sparse_attention(block, shape, 32, 16, 9, isa=_isa.AVX2) is not sparse
    n = tirx.Var("n", "int64")  # symbolic: built anew each time
    dynamic = sparse_attention.sparse_attention(block, [1, block.num_heads, n, 16], n, 16, 8, isa=_isa.AVX2)
    assert sparse_attention.sparse_attention(block, [1, block.num_heads, n, 16], n, 16, 8, isa=_isa.AVX2) is not dynamic


def test_generators_parse_without_outer_source_and_restore_inspect():
    """Generators parse under `fast_script_parsing`: `inspect.stack` has no source context past the
    third frame while one runs (concurrent and nested uses share the patch), and is the original after."""
    import inspect
    import threading

    from shadowattn_tvm._compat import fast_script_parsing

    original, seen, entered, release = inspect.stack, [], threading.Barrier(2), threading.Event()

    def user():
        with fast_script_parsing():
            entered.wait()
            release.wait()
            seen.append(inspect.stack())

    thread = threading.Thread(target=user)
    thread.start()
    with fast_script_parsing():
        entered.wait()
        with fast_script_parsing():
            frames = inspect.stack()
    assert inspect.stack is not original  # the other thread is still inside
    release.set()
    thread.join()
    assert inspect.stack is original
    for stack in (frames, seen[0]):
        assert stack[0].code_context is not None and all(f.code_context is None for f in stack[3:])
    block = AttentionSpec(q_len=16, head_dim=8).block()
    assert topk.topk_indices(block, 3, isa=_isa.AVX2).attrs["global_symbol"] == "sat_topk"  # macros found their parser
    assert inspect.stack is original


def test_exact_kernels_skip_buffer_compaction_and_compile_to_the_same_code():
    """Hand-written kernels carry EXACT_BUFFERS: lowering skips CompactBufferAllocation for them
    (slow on their many guarded accesses) and the machine code is what the pass would have given.
    Other PrimFuncs still get compacted."""
    import tvm
    from tvm import s_tir
    from tvm.script import tirx as T

    from shadowattn_tvm._compat import EXACT_BUFFERS
    from shadowattn_tvm.ops import pilot, topk_group

    block = AttentionSpec(q_len=32, head_dim=16, gqa="repeat").block()
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    assert topk_group.topk_group_indices(block, 4, isa=_isa.AVX2).attrs[EXACT_BUFFERS]
    kernels = [topk.topk_indices(block, 4, isa=_isa.AVX2),
               sparse_attention.sparse_attention(block, [1, block.num_heads, 32, 16], 32, 16, 8, isa=_isa.AVX2),
               pilot.pilot_scores(block, [1, block.num_heads, 32, 16], 32, isa=_isa.AVX2)]
    for func in kernels:  # compiled with and without the pass (1-2 s each)
        assert func.attrs[EXACT_BUFFERS]
        skipped = tvm.compile(func.with_attr("global_symbol", "main"), target=target)
        compacted = tvm.compile(func.without_attr(EXACT_BUFFERS).with_attr("global_symbol", "main"), target=target)
        assert skipped.mod.inspect_source("asm") == compacted.mod.inspect_source("asm")

    @T.prim_func
    def loose(a: T.Buffer((10,), "float32")):
        for i in T.parallel(2):
            buf = T.alloc_buffer((100,), "float32")
            for j in range(10):
                buf[j] = a[j]
            for j in range(10):
                a[j] = buf[j] + T.float32(1)

    for func, size in ((loose, 10), (loose.with_attr(EXACT_BUFFERS, True), 100)):
        out = s_tir.transform.CompactBufferAllocation()(tvm.IRModule({"main": func}))["main"]
        assert f"T.alloc_buffer(({size},)" in out.script()
