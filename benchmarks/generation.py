"""Greedy generation on SmolLM2: shadowAttn prefill vs dense prefill, token for token, and the timings.

    python benchmarks/generation.py [--tokens 64] [--keep 0.2] [--k-min 64 16]

Fixed prompts: three short chat questions (the chat template makes them ~40 tokens) and two long
ones (a passage of Pride and Prejudice, ~900 and ~1900 tokens, then a question). Each runs through
the dense-prefill module and the shadowAttn-prefill module (the shipped profile at `keep`, each
`k_min`); decode is dense in both. The table gives how many of the first `tokens` greedy tokens
equal dense's (the common prefix, and positions equal), prefill ms, time to first token and
decode tokens/s, all measured in this run on this host's CPU (not a phone).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

from shadowattn_tvm.calibrate.profile import SHIPPED_PROFILE, SparsityProfile  # noqa: E402
from shadowattn_tvm.evaluation.corpus import austen  # noqa: E402
from shadowattn_tvm.frontend import open_model  # noqa: E402
from shadowattn_tvm.generation import Generator  # noqa: E402
from shadowattn_tvm.runtime.generation import generate, prompt_ids  # noqa: E402

CHAT = ["What is the capital of France?", "Write a haiku about the sea.", "How many legs does a spider have?"]


def prompts(tokenizer):
    text = austen("prideprejudice")
    out = [(f"chat: {q}", prompt_ids(tokenizer, q, chat=True)) for q in CHAT]
    for words in (650, 1400):
        passage = " ".join(text.split()[:words])
        question = f"{passage}\n\nQuestion: Who is the author of this passage, and what is it about?"
        out.append((f"passage of {words} words + question", prompt_ids(tokenizer, question, chat=True)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--keep", type=float, default=0.2)
    parser.add_argument("--k-min", type=int, nargs="+", default=[64, 16])
    args = parser.parse_args(argv)
    source = open_model("smollm2")
    profile = SparsityProfile.load(SHIPPED_PROFILE).retarget(args.keep)
    cases = prompts(source.tokenizer)
    longest = max(len(ids) for _, ids in cases)
    common = dict(chunk=256, capacity=-(-(longest + args.tokens) // 256) * 256, prompt_tokens=longest)
    modes = {"dense": Generator.open(source, dense=True, **common)}
    for k_min in args.k_min:
        modes[f"keep {args.keep}, k_min {k_min}"] = Generator.open(source, keep=None, profile=profile, k_min=k_min,
                                                                  **common)
    print(f"load {os.getloadavg()[0]:.2f}; SmolLM2-135M-Instruct, greedy, {args.tokens} new tokens, host CPU, "
          f"{os.environ['TVM_NUM_THREADS']} threads; decode is dense in every mode")
    print(f"{'prompt':44} {'tokens':>6} {'mode':22} {'prefix=':>7} {'equal':>6} {'prefill ms':>10} {'TTFT ms':>8} "
          f"{'decode tok/s':>12}")
    for name, ids in cases:
        runs = {mode: generate(gen.session(), ids, args.tokens, eos_ids=()) for mode, gen in modes.items()}
        base = runs["dense"].tokens
        for mode, run in runs.items():
            prefix = next((i for i, (a, b) in enumerate(zip(run.tokens, base)) if a != b), len(base))
            equal = sum(a == b for a, b in zip(run.tokens, base))
            print(f"{name[:44]:44} {len(ids):>6} {mode:22} {prefix:>7} {equal:>6} {run.prefill_ms:>10.0f} "
                  f"{run.first_token_ms:>8.0f} {run.decode_tokens_per_s:>12.1f}", flush=True)
        print(f"{'':44} dense says: {source.tokenizer.decode(base, skip_special=True)[:90]!r}")


if __name__ == "__main__":
    main()
