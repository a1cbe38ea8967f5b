"""Tiny random-weight Hugging Face decoders, and the same weights written as a GGUF file.

Tests check our GGUF path against transformers' own logits and run ONNX exports of these
models through every command. Needs torch and transformers (the test extra), never the package.

    model = hf_model("qwen2")                    # Qwen2ForCausalLM, 2 layers, GQA 4/2, QKV bias
    write_gguf(model, "tiny-qwen2.gguf")         # the GGUF llama.cpp's converter would write
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiny_llama import MERGES, TOKENS

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3")
#: the GGUF architecture each family is written as (llama.cpp writes Mistral 7B as llama)
GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama"}
SLIDING_WINDOW = 8  # tokens: short enough that 24-token tests see it


def hf_config(family: str, vocab: int = len(TOKENS)):
    import transformers as T

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, attn_implementation="eager",
                  initializer_range=0.1, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        return T.LlamaConfig(**common)
    if family == "qwen2":
        return T.Qwen2Config(**common)
    if family == "qwen3":
        return T.Qwen3Config(head_dim=16, **common)
    if family == "mistral":
        return T.MistralConfig(sliding_window=SLIDING_WINDOW, **common)
    if family == "phi3":
        return T.Phi3Config(**{**common, "num_key_value_heads": 4}, pad_token_id=0)
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def hf_model(family: str, seed: int = 0, vocab: int = len(TOKENS)):
    import torch
    import transformers as T

    classes = {"llama": T.LlamaForCausalLM, "qwen2": T.Qwen2ForCausalLM, "qwen3": T.Qwen3ForCausalLM,
               "mistral": T.MistralForCausalLM, "phi3": T.Phi3ForCausalLM}
    torch.manual_seed(seed)
    model = classes[family](hf_config(family, vocab)).eval()
    with torch.no_grad():  # random norms and biases, so a wrong mapping cannot hide behind ones and zeros
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    return model


def hf_logits(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.as_tensor(np.asarray(ids, np.int64)[None])).logits[0].numpy()


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order for its interleaved-pair RoPE."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
          "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_gguf(model, path, family: str | None = None, arch: str | None = None) -> Path:
    """Write `model` (a `hf_model`) as GGUF with the tiny byte-level BPE vocabulary."""
    import gguf

    cfg = model.config
    family = family or cfg.model_type
    arch = arch or GGUF_ARCH[family]
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    tensors = {"token_embd.weight": model.model.embed_tokens.weight, "output_norm.weight": model.model.norm.weight,
               "output.weight": model.lm_head.weight}
    for name, p in model.model.layers.named_parameters():
        index, rest = name.split(".", 1)
        module, kind = rest.rsplit(".", 1)
        tensors[f"blk.{index}.{_NAMES[module]}.{kind}"] = p
    arrays = {}
    for name, p in tensors.items():
        w = p.detach().numpy().astype(np.float32)
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            w = _permute(w, heads if ".attn_q." in name else kv_heads)
        arrays[name] = w
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if head_dim != cfg.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if getattr(cfg, "sliding_window", None) and family == "mistral":
        writer.add_sliding_window(cfg.sliding_window)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if arch.startswith("qwen") else "default")
    writer.add_token_list(TOKENS)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, w in arrays.items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def write_tokenizer_json(directory, chat_template: str | None = None) -> Path:
    """tokenizer.json (the tiny byte-level BPE) and tokenizer_config.json (BOS, EOS, chat template)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(TOKENS)},
                               merges=[tuple(m.split(" ")) for m in MERGES]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(TOKENS[:3])
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": TOKENS[1], "eos_token": TOKENS[2], "add_bos_token": True}
    if chat_template:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory / "tokenizer.json"


__all__ = ["FAMILIES", "GGUF_ARCH", "SLIDING_WINDOW", "hf_config", "hf_logits", "hf_model", "write_gguf",
           "write_tokenizer_json"]
