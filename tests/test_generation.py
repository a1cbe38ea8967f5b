"""Text generation (`generation`, `runtime.generation`, `frontend.decoder.export_generation`) on tiny
models: the KV cache and every step's logits against numpy, greedy equality, stop rules, errors."""
from __future__ import annotations

import numpy as np
import pytest

from shadowattn_tvm.cli.main import main
from shadowattn_tvm.frontend import GGUFSource
from shadowattn_tvm.generation import Generator, prompt_ids
from shadowattn_tvm.runtime.generation import GenerationError, Sampler, generate
from shadowattn_tvm.testing import tiny_llama

CHUNK, CAPACITY = 8, 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "tiny-llama.gguf"
    return path, tiny_llama.write_tiny_gguf(path)


@pytest.fixture(scope="module")
def generators(tiny):
    source = GGUFSource(tiny[0])  # three prefill chunks: a 13-token prompt spans two, the last padded
    opened = {mode: Generator.open(source, chunk=CHUNK, capacity=CAPACITY, prompt_tokens=3 * CHUNK, use_cache=False,
                                   **kw) for mode, kw in (("dense", dict(dense=True)), ("keep1", dict(keep=1.0)),
                                                          ("keep0.3", dict(keep=0.3, k_min=2)),
                                                          ("group0.3", dict(keep=0.3, k_min=2, selection="group")))}
    return opened


def test_cache_and_every_step_match_numpy(tiny, generators):
    _, weights = tiny
    session = generators["keep1"].session()
    ids = list(np.random.default_rng(0).integers(3, 200, 13))
    logits = session.prefill(ids)
    expected, cache = tiny_llama.numpy_forward(weights, ids, return_kv=True)
    np.testing.assert_allclose(logits, expected[-1], rtol=1e-4, atol=1e-4)
    kv = session.kv.numpy()
    for layer, (k, v) in enumerate(cache):  # rows 0..12 hold the prompt's rotated keys and its values
        np.testing.assert_allclose(kv[layer, 0, :, :13], k, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(kv[layer, 1, :, :13], v, rtol=1e-4, atol=1e-4)
    for step in range(4):
        token = int(np.argmax(logits))
        ids.append(token)
        logits = session.decode(token)
        np.testing.assert_allclose(logits, tiny_llama.numpy_forward(weights, ids)[-1], rtol=1e-4, atol=1e-4)
    assert session.length == 17


def test_greedy_at_keep_one_equals_dense_and_sparse_runs(generators):
    prompt = "the cat sat on"  # 14 tokens of the tiny byte-level vocabulary: two chunks
    tokens = {mode: g.generate(prompt, max_new_tokens=12).tokens for mode, g in generators.items()}
    assert tokens["keep1"] == tokens["dense"] and len(tokens["dense"]) == 12
    assert len(tokens["keep0.3"]) == 12 and len(tokens["group0.3"]) == 12  # may differ from dense; must generate
    group_topk = {mode: generators[mode].executable.mod.implements_function("sat_topk_group", query_imports=True)
                  for mode in ("keep0.3", "group0.3")}
    assert group_topk == {"keep0.3": False, "group0.3": True}  # one top-k per KV group only where asked


def test_stop_rules(generators):
    gen = generators["dense"]
    ids = prompt_ids(gen.tokenizer, "the cat")
    first = gen.generate("the cat", max_new_tokens=3).tokens[0]
    stopped = generate(gen.session(), ids, 5, eos_ids={first})
    assert stopped.stopped == "eos" and stopped.tokens == []
    assert generate(gen.session(), ids, 3).stopped == "max-new-tokens"
    full = generate(gen.session(), ids, 100)  # the cache holds CAPACITY tokens in all
    assert full.stopped == "capacity" and len(ids) + len(full.tokens) == CAPACITY + 1
    sampled = [generate(gen.session(), ids, 6, Sampler(temperature=1.0, top_p=0.9, seed=s)).tokens for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and len(sampled[2]) == 6  # seeded


def test_prompt_limits_are_errors(generators):
    session = generators["dense"].session()
    with pytest.raises(GenerationError, match="the prompt is empty"):
        session.prefill([])
    with pytest.raises(GenerationError, match=r"at most 24 \(3 chunk\(s\) of 8\)"):
        session.prefill(list(range(3, 28)))
    with pytest.raises(GenerationError, match="max-new-tokens must be a whole number >= 1"):
        generate(session, [5, 6], 0)
    with pytest.raises(GenerationError, match="top-p"):
        Sampler(temperature=1.0, top_p=0)


@pytest.mark.parametrize("kw,message", [
    (dict(temperature=1.0, seed=-1), r"^--seed must be a whole number >= 0, got -1$"),
    (dict(temperature=1.0, seed=1.5), r"^--seed must be a whole number >= 0, got 1\.5$"),
    (dict(top_p=0.5), r"^--top-p 0\.5 has no effect on greedy decoding \(temperature 0\): pass --temperature > 0 "
                      r"to sample, or drop --top-p$"),
])
def test_sampler_settings_are_checked(kw, message):
    with pytest.raises(GenerationError, match=message):
        Sampler(**kw)
    Sampler(temperature=1.0, top_p=0.5, seed=2**70)  # any seed >= 0 numpy takes


def test_chat_template(tmp_path):
    from shadowattn_tvm.testing import tiny_models
    from shadowattn_tvm.tokenizer import from_file

    template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}" \
               "{% if add_generation_prompt %}<s>assistant: {% endif %}"
    tok = from_file(tiny_models.write_tokenizer_json(tmp_path, chat_template=template))
    assert tok.render_chat([{"role": "user", "content": "hi"}]) == "<s>user: hi</s><s>assistant: "
    ids = prompt_ids(tok, "hi", chat=True)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 2  # special tokens stay whole in the template
    saved = from_file(tok.save(tmp_path / "again"))
    assert saved.chat_template == template and saved.eos_ids == tok.eos_ids and saved.bos_id == tok.bos_id


@pytest.mark.parametrize("argv,message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--prompt", "hi", "--temperature", "-1"], "--temperature must be >= 0"),
    (["--prompt", "hi", "--keep", "0"], "outside (0, 1]"),
    (["--prompt", "hi", "--dense", "--selection", "group"], "drop --dense or --selection"),
    (["--prompt", "the cat " * 40, "--capacity", "32", "--chunk", "8"], "the KV cache holds 32"),
    (["--prompt", "hi", "--capacity", "256", "--chunk", "7"],
     "must be a multiple of the chunk (7) and hold 1 chunk(s): pass a --chunk dividing the capacity (e.g. 4) or a "
     "--capacity of 252"),
])
def test_generate_cli_rejects_bad_input(tiny, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["generate", str(tiny[0]), *argv])
    text = str(info.value.code)
    assert text.startswith("shadowattn generate: error: ") and "\n" not in text and message in text


def test_generate_cli_streams_and_reports(tiny, capsys):
    assert main(["generate", str(tiny[0]), "--prompt", "the cat", "--max-new-tokens", "5", "--chunk", "8",
                 "--capacity", "32", "--dense"]) == 0
    captured = capsys.readouterr()
    assert "5 tokens, decode" in captured.err and "prefill" in captured.err and "stopped: max-new-tokens" in captured.err


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_greedy_decode_matches_transformers(family, tmp_path):
    """NeoX RoPE at decode positions, QKV bias, the sliding window in the decode kernel (window 8 < the
    20-token continuation): our cache-based greedy tokens equal transformers' generate()."""
    pytest.importorskip("transformers")
    import torch

    from shadowattn_tvm.testing import tiny_models

    model = tiny_models.hf_model(family)
    path = tiny_models.write_gguf(model, tmp_path / f"{family}.gguf")
    gen = Generator.open(GGUFSource(path), chunk=CHUNK, capacity=CAPACITY, prompt_tokens=CHUNK, keep=1.0,
                         use_cache=False)
    ids = [5, 77, 120, 9, 33, 201, 18]
    ours = generate(gen.session(), ids, 20).tokens
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    assert ours == out[0, len(ids):].tolist()


def test_sparse_decode_keeps_the_int8_cache_and_equals_dense_at_keep_one(tiny):
    """Sparse decode (beyond the paper): INT8 keys written with the calibrated scale by every
    function, decode_sparse over the pilot's picks; keeping every key it is dense decode."""
    from shadowattn_tvm.calibrate.calibrate import calibrate
    from shadowattn_tvm.frontend import ModelRunner

    source = GGUFSource(tiny[0])
    profile = calibrate(ModelRunner(source), "the cat sat on the mat and the dog ate the hat " * 20, keep=0.5,
                        ctx=32, progress=False)
    ids = list(np.random.default_rng(4).integers(3, 200, 12))
    common = dict(dense=True, chunk=CHUNK, capacity=CAPACITY, prompt_tokens=16, use_cache=False, k_min=2)
    dense = generate(Generator.open(source, **common).session(), ids, 10).tokens
    full = Generator.open(source, profile=profile.retarget(1.0), sparse_decode_from=1, **common)
    session = full.session()
    assert generate(session, ids, 10).tokens == dense
    ks = np.array([layer.k_scales for layer in profile.layers], "float32")
    kv, k8 = (c.numpy() for c in session.caches)
    n = session.length  # every row written so far, prefill and decode, is in the INT8 cache too
    np.testing.assert_array_equal(k8[:, :, :n], np.clip(np.rint(kv[:, 0, :, :n] / ks[:, :, None, None]), -127, 127))
    sparse = Generator.open(source, profile=profile.retarget(0.3), sparse_decode_from=1, **common)
    assert len(generate(sparse.session(), ids, 10).tokens) == 10
    with pytest.raises(GenerationError, match="needs a calibrated profile"):
        Generator.open(source, sparse_decode_from=1, **common)


def _foreign_tokenizer(path):
    """A tokenizer.json whose ids run past the tiny model's 263-token vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "hello": 500}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return str(path)


def test_generate_cli_checks_tokens_and_capacity_before_compiling(tiny, tmp_path):
    cases = [(["--tokenizer", _foreign_tokenizer(tmp_path / "tokenizer.json")],
              "token id 500 is outside the model's vocabulary of"),
             (["--capacity", "100000"], "--capacity 100000 exceeds tiny-llama.gguf's context length")]
    for extra, message in cases:
        with pytest.raises(SystemExit, match=message):
            main(["generate", str(tiny[0]), "--prompt", "hello", *extra])


@pytest.mark.parametrize("prompt,message", [("", "the prompt is empty"),
                                            ("the cat " * 20, "the reference prompt has .* tokens but the build "
                                                              "prefills 8: shorten --prompt or raise --tokens")])
def test_a_generation_build_keeps_the_users_prompt_or_refuses_it(tiny, tmp_path, prompt, message):
    with pytest.raises(SystemExit, match=message):
        main(["compile", str(tiny[0]), "--device", "host", "--generate", "--tokens", "8", "--prompt", prompt,
              "-o", str(tmp_path / "b")])
