"""The generation kernels (`ops.decode`, `ops.sparse_decode`) against numpy, as the host builds them."""
import numpy as np
import pytest
import tvm

from shadowattn_tvm.ops.decode import decode_attention, kv_write
from shadowattn_tvm.ops.sparse_decode import kv_quantize, numpy_reference, sparse_decode_attention

from ..conftest import build_prim

H, HKV, C, D, L = 4, 2, 64, 16, 3
t = tvm.runtime.tensor


@pytest.fixture(scope="module")
def cache():
    rng = np.random.default_rng(0)
    kv = rng.standard_normal((L, 2, HKV, C, D)).astype("float32")
    ks = (np.abs(kv[:, 0]).max(axis=(2, 3)) / 127).astype("float32")
    k8 = np.clip(np.rint(kv[:, 0] / ks[:, :, None, None]), -127, 127).astype("int8")
    return kv, ks, k8


def _dense(q, k, v, scale, group):
    out = np.zeros(q.shape)
    for h in range(q.shape[0]):
        logits = k[h // group] @ q[h] * scale
        p = np.exp(logits - logits.max())
        out[h] = p @ v[h // group] / p.sum()
    return out


@pytest.mark.parametrize("window", [0, 8])
def test_decode_attention_reads_rows_up_to_pos(cache, window):
    kv = cache[0]
    q = np.random.default_rng(1).standard_normal((1, 1, H, D)).astype("float32")
    fn = build_prim(decode_attention(H, HKV, C, D, 0.25, window))
    for pos, layer in [(0, 0), (40, 1), (63, 2)]:
        out = tvm.runtime.empty(q.shape, "float32")
        fn(t(q), t(kv), t(np.array([pos], "int32")), layer, out)
        lo = max(0, pos - window + 1) if window else 0
        ref = _dense(q[0, 0], kv[layer, 0, :, lo:pos + 1], kv[layer, 1, :, lo:pos + 1], 0.25, H // HKV)
        np.testing.assert_allclose(out.numpy()[0, 0], ref, rtol=1e-5, atol=1e-5)


def test_kv_write_and_quantize_rows_in_place(cache):
    kv, ks, _ = cache
    rows = np.random.default_rng(2).standard_normal((2, 1, 5, HKV, D)).astype("float32")
    buf, k8 = t(kv.copy()), t(np.zeros((L, HKV, C, D), "int8"))
    build_prim(kv_write(L, HKV, C, D, 5))(buf, t(rows[0]), t(rows[1]), t(np.array([60], "int32")), 1)
    build_prim(kv_quantize(L, HKV, C, D, 5))(k8, t(rows[0]), t(np.array([60], "int32")), 1, t(ks))
    got = buf.numpy()
    np.testing.assert_array_equal(got[1, 0, :, 60:], rows[0, 0, :4].transpose(1, 0, 2))  # row 64 is past C
    np.testing.assert_array_equal(got[1, 1, :, 60:], rows[1, 0, :4].transpose(1, 0, 2))
    np.testing.assert_array_equal(np.delete(got, 1, axis=0), np.delete(kv, 1, axis=0))  # other layers untouched
    expected = np.clip(np.rint(rows[0, 0, :4].transpose(1, 0, 2) / ks[1][:, None, None]), -127, 127)
    np.testing.assert_array_equal(k8.numpy()[1, :, 60:], expected)


def test_sparse_decode_matches_numpy_and_keeps_everything_at_ratio_one(cache):
    kv, _, k8 = cache
    q = np.random.default_rng(3).standard_normal((1, 1, H, D)).astype("float32")
    qs = np.full((L, H), np.abs(q).max() / 127, "float32")
    fn = build_prim(sparse_decode_attention(H, HKV, C, D, 0.25, k_min=4))
    for ratios in (np.array([[0.3, 0.5, 1.0, 0.1]] * L, "float32"), np.ones((L, H), "float32")):
        for pos, layer in [(3, 0), (40, 1), (63, 2)]:
            out = tvm.runtime.empty(q.shape, "float32")
            fn(t(q), t(kv), t(k8), t(np.array([pos], "int32")), layer, t(qs), t(ratios), out)
            n = pos + 1
            ref = numpy_reference(q[0, 0], kv[layer, 0, :, :n], kv[layer, 1, :, :n], k8[layer, :, :n], qs[layer],
                                  ratios[layer], 4, 0.25, H // HKV)
            np.testing.assert_allclose(out.numpy()[0, 0], ref, rtol=1e-5, atol=1e-5)
            if (ratios == 1).all():  # every key kept: dense attention
                dense = _dense(q[0, 0], kv[layer, 0, :, :n], kv[layer, 1, :, :n], 0.25, H // HKV)
                np.testing.assert_allclose(out.numpy()[0, 0], dense, rtol=1e-5, atol=1e-5)
