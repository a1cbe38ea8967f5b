"""GGUF loading, tokenizer and the Llama nn.Module on a tiny random model written as real GGUF."""
from __future__ import annotations

import numpy as np
import pytest

import shadowattn_tvm as sat
from shadowattn_tvm.frontend import load_gguf
from shadowattn_tvm.frontend.model import LlamaRunner, resolve_model
from shadowattn_tvm.testing import tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    weights = tiny_llama.write_tiny_gguf(path)
    return path, weights


def test_gguf_config_weights_and_tokenizer(tiny):
    path, weights = tiny
    model = load_gguf(path)
    c = model.config
    assert (c.layers, c.hidden, c.heads, c.kv_heads, c.intermediate) == (2, 64, 4, 2, 96)
    assert c.tie_embeddings and c.bos_id == 1 and c.head_dim == 16
    np.testing.assert_array_equal(model.weights["blk.0.attn_q.weight"], weights["blk.0.attn_q.weight"].T)
    tok = LlamaRunner(model).tokenizer
    ids = tok.encode("the cat").ids
    assert tok.decode(ids) == "the cat"
    assert model.tokens.index("the") in ids  # merges applied
    assert len(model.fingerprint) == 16


def test_logits_match_numpy_and_every_block_is_found(tiny):
    path, weights = tiny
    runner = LlamaRunner(load_gguf(path))
    ids = np.random.default_rng(0).integers(3, 200, 24)
    report = sat.AttentionReport()
    dense = runner.compile(24, sat.lowering())(ids)
    expected = tiny_llama.numpy_forward(weights, ids)
    np.testing.assert_allclose(dense, expected, rtol=2e-4, atol=2e-4)
    full = runner.compile(24, sat.pipeline(keep=1.0, report=report))(ids)
    assert report.summary() == "2/2 attention blocks rewritten"
    assert all(c.causal == "bottom_right" and c.num_kv_heads == 2 for c in report.candidates)
    np.testing.assert_allclose(full, expected, rtol=2e-4, atol=2e-4)
    sparse = runner.compile(24, sat.pipeline(keep=0.3, k_min=2))(ids)
    assert np.abs(sparse - expected).max() > 1e-3  # sparse differs, but stays a sane distribution
    assert np.isfinite(sparse).all()


def test_unknown_model_names_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'gpt5'"):
        resolve_model("gpt5")
    with pytest.raises(FileNotFoundError):
        load_gguf("/nonexistent/model.gguf")
