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
