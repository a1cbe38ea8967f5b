"""GGUF decoders (`frontend.gguf_file`, `frontend.decoder`, the `architectures` table) on tiny
random models written as real GGUF files: our logits against numpy and against transformers."""
from __future__ import annotations

import numpy as np
import pytest

import shadowattn_tvm as sat
from shadowattn_tvm.frontend import GGUFSource, ModelRunner
from shadowattn_tvm.frontend.architectures import UnsupportedArchitecture
from shadowattn_tvm.frontend.gguf_file import GGUFError
from shadowattn_tvm.testing import tiny_llama

TOKENS = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    weights = tiny_llama.write_tiny_gguf(path)
    return path, weights


def test_gguf_config_weights_and_tokenizer(tiny):
    path, weights = tiny
    source = GGUFSource(path)
    c = source.config
    assert (c.arch.name, c.layers, c.hidden, c.heads, c.kv_heads, c.intermediate) == ("llama", 2, 64, 4, 2, 96)
    assert c.tie_embeddings and c.head_dim == 16 and c.sliding_window == 0
    exported = source.export(TOKENS)
    arrays = exported.weights()
    np.testing.assert_array_equal(arrays["layers.0.attn.q_proj.weight"], weights["blk.0.attn_q.weight"].T)
    np.testing.assert_array_equal(arrays["lm_head.weight"], weights["token_embd.weight"].T)  # tied
    assert [p.name for p in exported.mod["main"].params[1:]] == exported.weight_names
    tok = source.tokenizer
    ids = tok.encode("the cat")
    assert tok.decode(ids) == "the cat" and tiny_llama.TOKENS.index("the") in ids  # merges applied
    assert tok.bos_id == 1 and tok.eos_ids == {2}
    assert len(source.fingerprint) == 16


def test_logits_match_numpy_and_every_block_is_found(tiny):
    path, weights = tiny
    runner = ModelRunner(GGUFSource(path))
    ids = np.random.default_rng(0).integers(3, 200, TOKENS)
    report = sat.AttentionReport()
    dense = runner.compile(TOKENS, sat.lowering())(ids)
    expected = tiny_llama.numpy_forward(weights, ids)
    np.testing.assert_allclose(dense, expected, rtol=2e-4, atol=2e-4)
    full = runner.compile(TOKENS, sat.pipeline(keep=1.0, report=report))(ids)
    assert report.summary() == "2/2 attention blocks rewritten"
    assert all(c.causal == "bottom_right" and c.num_kv_heads == 2 for c in report.candidates)
    np.testing.assert_allclose(full, expected, rtol=2e-4, atol=2e-4)
    sparse = runner.compile(TOKENS, sat.pipeline(keep=0.3, k_min=2))(ids)
    assert np.abs(sparse - expected).max() > 1e-3  # sparse differs, but stays a sane distribution
    assert np.isfinite(sparse).all()


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3", "mistral"])
def hf_pair(request, tmp_path_factory):
    pytest.importorskip("transformers", reason="the reference logits come from transformers (pip install -e '.[test]')")
    from shadowattn_tvm.testing import tiny_models

    model = tiny_models.hf_model(request.param)
    path = tiny_models.write_gguf(model, tmp_path_factory.mktemp("gguf") / f"tiny-{request.param}.gguf")
    return request.param, model, GGUFSource(path)


@pytest.mark.slow
def test_each_architecture_matches_transformers(hf_pair):
    """The GGUF llama.cpp's converter would write, run by our decoder, against transformers' eager
    logits: Qwen2's QKV bias, Qwen3's Q/K norm and head_dim, Mistral's sliding window, Llama's
    permuted Q/K rows for interleaved RoPE."""
    from shadowattn_tvm.testing import tiny_models

    family, model, source = hf_pair
    assert source.config.arch.name == tiny_models.GGUF_ARCH[family]
    assert source.config.sliding_window == (tiny_models.SLIDING_WINDOW if family == "mistral" else 0)
    ids = np.random.default_rng(1).integers(3, 250, TOKENS)
    expected = tiny_models.hf_logits(model, ids)
    runner = ModelRunner(source)
    np.testing.assert_allclose(runner.compile(TOKENS, sat.lowering())(ids), expected, rtol=1e-4, atol=1e-4)
    report = sat.AttentionReport()
    full = runner.compile(TOKENS, sat.pipeline(keep=1.0, report=report))(ids)
    assert report.summary() == "2/2 attention blocks rewritten"
    np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-4)


def _write(path, arch: str, tensors=True):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    if tensors:
        writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(UnsupportedArchitecture, match=r"'falcon' is not supported; supported: llama .*qwen2.*qwen3"):
        GGUFSource(_write(tmp_path / "falcon.gguf", "falcon"))
    with pytest.raises(GGUFError, match="metadata qwen2.attention.head_count is missing"):
        GGUFSource(_write(tmp_path / "partial.gguf", "qwen2"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        GGUFSource(junk)
    with pytest.raises(FileNotFoundError):
        GGUFSource(tmp_path / "missing.gguf")
