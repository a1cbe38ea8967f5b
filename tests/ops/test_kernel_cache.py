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
