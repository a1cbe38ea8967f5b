"""The numpy attention variants behind AttentionHook, on small random blocks."""
import numpy as np
import pytest

from shadowattn_tvm.block import AttentionBlock, CausalMode
from shadowattn_tvm.calibrate import LayerProfile, SparsityProfile
from shadowattn_tvm.evaluation.perplexity import Metrics, windows
from shadowattn_tvm.evaluation.variants import BlockSparseVariant, DenseVariant, Int8DenseVariant
from shadowattn_tvm.ops import reference

BLOCK = AttentionBlock(0, 4, 2, 16, CausalMode.BOTTOM_RIGHT, 0.25, "float32")


@pytest.fixture
def qkv():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((1, 4, 130, 16)).astype("float32"),
            rng.standard_normal((1, 2, 130, 16)).astype("float32"),
            rng.standard_normal((1, 2, 130, 16)).astype("float32"))


def test_dense_matches_reference_and_zeroes_heads(qkv):
    q, k, v = qkv
    expected = reference.dense_attention(q, k, v, BLOCK)
    np.testing.assert_allclose(DenseVariant({0: BLOCK})(0, q, k, v), expected, rtol=1e-4, atol=1e-5)
    out = DenseVariant({0: BLOCK}, zero_heads={(0, 2)})(0, q, k, v)
    assert (out[:, 2] == 0).all() and np.allclose(out[:, 1], expected[:, 1], atol=1e-5)
    assert (DenseVariant({0: BLOCK}, zero_layers={0})(0, q, k, v) == 0).all()


def test_dense_records_scales_and_recall(qkv):
    q, k, v = qkv
    stats = {}
    variant = DenseVariant({0: BLOCK}, record=stats, recall_keep=0.2, k_min=4, recall_stride=4)
    variant(0, q, k, v)
    np.testing.assert_allclose(stats[0]["q"][0], np.abs(q).max(axis=(0, 2, 3)) / 127)
    assert 0.8 < variant.recall <= 1.0


def test_int8_dense_is_close_but_not_exact(qkv):
    q, k, v = qkv
    scales = [tuple(np.abs(x).max(axis=(0, 2, 3)) / 127) for x in (q, k, v)]
    profile = SparsityProfile(keep=0.2, layers=(LayerProfile((0.2,) * 4, scales[0], scales[1], scales[2]),))
    out = Int8DenseVariant({0: BLOCK}, profile)(0, q, k, v)
    expected = reference.dense_attention(q, k, v, BLOCK)
    err = np.abs(out - expected).max()
    assert 1e-4 < err < 0.5  # int8 P and V cost accuracy, but it is still attention


def test_block_sparse_keeps_everything_at_keep_one(qkv):
    q, k, v = qkv
    expected = reference.dense_attention(q, k, v, BLOCK)
    np.testing.assert_allclose(BlockSparseVariant({0: BLOCK}, 1.0, block_size=32)(0, q, k, v), expected,
                               rtol=1e-4, atol=1e-5)
    sparse = BlockSparseVariant({0: BLOCK}, 0.3, block_size=32)(0, q, k, v)
    assert np.isfinite(sparse).all() and np.abs(sparse - expected).max() > 1e-3


def test_windows_and_metrics():
    ids = list(range(10, 40))
    wins = windows(ids, ctx=8, count=3, bos=1)
    assert [w[0] for w in wins] == [1, 1, 1] and list(wins[1][1:]) == list(range(17, 24))
    with pytest.raises(ValueError, match="windows"):
        windows(ids, ctx=8, count=9, bos=1)
    with pytest.raises(ValueError, match=r"holds 1 text tokens after BOS; perplexity needs 2: .* at least 3"):
        windows(ids, ctx=2, count=1, bos=1)  # the text is long enough: the context is what is short
    with pytest.raises(ValueError, match=r"holds 1 text tokens; perplexity needs 2: .* at least 2"):
        windows(ids, ctx=1, count=1, bos=None)
    logits = np.zeros((8, 50), "float32")
    m = Metrics()
    m.add(logits, wins[0], logits)
    assert m.perplexity == pytest.approx(50) and m.mean_kl == pytest.approx(0) and m.top1_agreement == 1


def test_the_progress_bar_ends_its_line_on_an_error(capsys):
    from shadowattn_tvm.evaluation.perplexity import progress_bar

    with pytest.raises(RuntimeError):
        with progress_bar(3, True, "runs") as step:
            step()
            raise RuntimeError("a failure mid-run")
    err = capsys.readouterr().err
    assert "1/3" in err and err.endswith("\n")  # the error's line is not the bar's
    with progress_bar(3, False, "runs") as step:
        step()
    assert capsys.readouterr().err == ""
