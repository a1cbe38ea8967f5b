"""Byte-level BPE tokenizer built from GGUF metadata (tokens + merges) with the `tokenizers` package."""
from __future__ import annotations


def gguf_tokenizer(tokens, merges):
    """GPT-2 style byte-level BPE with single-digit splitting (llama.cpp's `smollm` pre-tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok
