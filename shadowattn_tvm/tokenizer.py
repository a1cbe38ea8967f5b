"""`TextTokenizer`: a `tokenizers.Tokenizer` with the special tokens and chat template of its model.

Made from a GGUF file's metadata (byte-level BPE: ``tokenizer.ggml.tokens``/``merges``, the
pre-tokenizer named by ``tokenizer.ggml.pre``) or from a Hugging Face ``tokenizer.json``, whose
``tokenizer_config.json`` next to it (when present) gives BOS, EOS and the chat template.
`encode` never adds special tokens: callers place BOS themselves. `bos_id` is the model's BOS
token (None when it has none, as Qwen models); `add_bos` says whether prompts start with it
(SmolLM2's GGUF says no: its chat template opens with ``<|im_start|>``). Perplexity windows
start with BOS whenever the model has one, the convention of the reference measurements.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Pre-tokenizer split patterns of the byte-level BPE vocabularies llama.cpp names in tokenizer.ggml.pre
_LETTERS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_SPLITS = {
    "qwen2": _LETTERS + r"\p{N}" + _REST,
    "llama-bpe": _LETTERS + r"\p{N}{1,3}" + _REST,
}


class TokenizerError(ValueError):
    pass


def check_token_ids(ids, vocab: int) -> None:
    """Token ids must index the model's `vocab`-row embedding: its gather does not check them, so an id
    from another model's tokenizer would read past the table."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        bad = int(ids.max() if ids.max() >= vocab else ids.min())
        raise TokenizerError(f"token id {bad} is outside the model's vocabulary of {vocab} tokens: the tokenizer "
                             "does not belong to this model (pass the model's own with --tokenizer, or none)")


@dataclass
class TextTokenizer:
    backend: object  # tokenizers.Tokenizer
    bos_id: int | None = None
    add_bos: bool = False
    eos_ids: frozenset = frozenset()
    chat_template: str | None = None
    special: dict = field(default_factory=dict)  # bos_token / eos_token strings, for chat templates

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list:
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids, skip_special: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def save(self, directory) -> Path:
        """tokenizer.json and tokenizer_config.json (BOS/EOS, chat template) into `directory`: what
        `from_file` reads back, so a build carries its model's tokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        bos = self.backend.id_to_token(self.bos_id) if self.bos_id is not None else None
        eos = sorted(self.eos_ids)
        config = {"bos_token": bos, "add_bos_token": self.add_bos, "chat_template": self.chat_template,
                  "eos_token": self.backend.id_to_token(eos[0]) if eos else None, "eos_token_ids": eos}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        return directory / "tokenizer.json"

    def render_chat(self, messages: list, add_generation_prompt: bool = True) -> str:
        """The model's chat template applied to [{"role": ..., "content": ...}] (Jinja2, as transformers)."""
        if not self.chat_template:
            raise TokenizerError("this model has no chat template (none in its GGUF metadata or "
                                 "tokenizer_config.json): run without --chat")
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())

        def raise_exception(message):
            raise TokenizerError(f"the chat template refused the conversation: {message}")

        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                          **self.special)


def from_gguf_fields(get) -> TextTokenizer:
    """From GGUF metadata; `get(key, default)` reads a field."""
    model = get("tokenizer.ggml.model", "gpt2")
    if model != "gpt2":
        raise TokenizerError(f"the GGUF's tokenizer is {model!r} (not byte-level BPE), which we do not rebuild: "
                             "pass the model's tokenizer.json with --tokenizer")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, Regex

    tokens = list(get("tokenizer.ggml.tokens", []))
    merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    pre = get("tokenizer.ggml.pre", "default")
    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:  # gpt-2's own split
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    types = list(get("tokenizer.ggml.token_type", []))
    specials = [t for t, kind in zip(tokens, types) if int(kind) == 3]  # CONTROL tokens are atomic
    if specials:
        tok.add_special_tokens(specials)
    bos, eos = get("tokenizer.ggml.bos_token_id", None), get("tokenizer.ggml.eos_token_id", None)
    add_bos = bool(get("tokenizer.ggml.add_bos_token", bos is not None))
    eos_ids = {int(x) for x in (eos, get("tokenizer.ggml.eot_token_id", None)) if x is not None}
    special = {"bos_token": tokens[int(bos)] if bos is not None else "",
               "eos_token": tokens[int(eos)] if eos is not None else ""}
    return TextTokenizer(tok, int(bos) if bos is not None else None, add_bos and bos is not None, frozenset(eos_ids),
                         get("tokenizer.chat_template", None), special)


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def from_file(path) -> TextTokenizer:
    """A ``tokenizer.json`` (with ``tokenizer_config.json`` beside it, if any) or a GGUF's tokenizer."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = path / "tokenizer.json"
        fix = f"pass {inside}" if inside.is_file() else "pass the tokenizer.json or .gguf file inside it"
        raise TokenizerError(f"tokenizer file {path} is a directory: {fix}")
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise TokenizerError(f"tokenizer file {path} {what}: pass a tokenizer.json or a .gguf file")
    if path.suffix == ".gguf":
        from .frontend.gguf_file import read_metadata

        return from_gguf_fields(read_metadata(path))
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - the tokenizers package raises its own exception type
        raise TokenizerError(f"{path} is not a tokenizer.json the `tokenizers` package reads ({err})") from None
    config_path = path.with_name("tokenizer_config.json")
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    bos_id = backend.token_to_id(bos) if bos else None
    add_bos = bos_id is not None and bool(config.get("add_bos_token", False))
    eos_ids = frozenset(i for i in (backend.token_to_id(eos) if eos else None,) if i is not None)
    eos_ids |= frozenset(int(i) for i in config.get("eos_token_ids", ()))
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return TextTokenizer(backend, bos_id, add_bos, eos_ids, template, {"bos_token": bos or "", "eos_token": eos or ""})


__all__ = ["TextTokenizer", "TokenizerError", "from_file", "from_gguf_fields"]
