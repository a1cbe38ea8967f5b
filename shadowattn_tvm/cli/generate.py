"""`shadowattn generate MODEL --prompt TEXT`: shadowAttn prefill, then KV-cache decode, streamed."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text: shadowAttn prefill into a KV cache, then decode, streamed",
                       description="Prefill the prompt with the shadowAttn pass set into a static-capacity KV cache, "
                                   "then decode token by token (dense attention over the cache), streaming the text; "
                                   "stops at the model's end-of-sequence token or after --max-new-tokens. Prints "
                                   "prefill time, time to first token and decode tokens/s (this host's CPU). The "
                                   "compiled module is cached, so the first run compiles and later runs start at once.")
    p.add_argument("model", nargs="?", default="smollm2", help="'smollm2' (the default) or a .gguf file")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the top-p probability mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template to the prompt")
    p.add_argument("--keep", type=float, default=0.2, help="prefill keep ratio (default 0.2; 1.0 keeps every key)")
    p.add_argument("--k-min", type=int, default=64,
                   help="fewest keys a prompt row keeps (default 64: a prompt under k-min/keep tokens gains nothing "
                        "from sparse attention, and a short chat prompt at 16 keys per row can change the answer)")
    p.add_argument("--profile", metavar="FILE", help="calibration profile (smollm2: the shipped one by default)")
    p.add_argument("--dense", action="store_true", help="dense prefill (no shadowAttn), the baseline")
    p.add_argument("--selection", choices=("head", "group"), default="head",
                   help="prefill top-k per query head (default, the paper's) or one per KV group")
    p.add_argument("--chunk", type=int, default=256, help="prompt tokens per prefill function (default 256)")
    p.add_argument("--capacity", type=int, help="KV cache rows: prompt + new tokens (default 2048, or the model's "
                                                "context length if shorter)")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json to use instead of the GGUF's own")
    p.add_argument("--quiet", action="store_true", help="print only the generated text")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..calibrate.profile import SHIPPED_PROFILE, SparsityProfile, check_keep
    from ..frontend.source import open_model
    from ..generation import DEFAULT_CAPACITY, Generator, decoder_source, prompt_ids
    from ..runtime.generation import Sampler
    from ..tokenizer import check_token_ids
    from ._checks import positive

    check_keep(args.keep)
    positive("--max-new-tokens", args.max_new_tokens)
    positive("--chunk", args.chunk)
    if args.capacity is not None:
        positive("--capacity", args.capacity)
    if not args.prompt:
        raise SystemExit("the prompt is empty: pass --prompt TEXT")
    if args.dense and args.selection != "head":
        raise SystemExit("--selection chooses the shadowAttn prefill's top-k: drop --dense or --selection")
    sampler = Sampler(args.temperature, args.top_p, args.seed)
    profile = SparsityProfile.load(args.profile) if args.profile else None
    if profile is None and args.model == "smollm2" and args.keep < 1:
        profile = SparsityProfile.load(SHIPPED_PROFILE).retarget(args.keep)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    source = open_model(args.model, args.tokenizer)
    if profile is not None:
        profile.check_model(source.fingerprint, lambda line: print(line, file=sys.stderr))
    ids = prompt_ids(source.tokenizer, args.prompt, args.chat)  # the chunks to compile follow the prompt
    check_token_ids(ids, decoder_source(source).config.vocab)  # before compiling anything
    if args.capacity is not None and source.max_len is not None and args.capacity > source.max_len:
        raise SystemExit(f"--capacity {args.capacity} exceeds {source.name}'s context length ({source.max_len}): use "
                         f"at most {source.max_len}")
    positive("--k-min", args.k_min)
    gen = Generator.open(source, keep=args.keep, profile=profile, k_min=args.k_min, dense=args.dense, chunk=args.chunk,
                         capacity=args.capacity or DEFAULT_CAPACITY, prompt_tokens=len(ids), log=log,
                         selection=args.selection)

    def show(piece):
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = gen.generate(args.prompt, chat=args.chat, max_new_tokens=args.max_new_tokens, sampler=sampler,
                          on_text=show)
    print()
    if not args.quiet:
        mode = "dense" if args.dense else f"shadowAttn keep {args.keep}, {args.selection} selection"
        print(f"[generate] {result.prompt_tokens} prompt tokens ({mode} prefill) in {result.prefill_ms:.0f} ms; "
              f"first token after {result.first_token_ms:.0f} ms; {len(result.tokens)} tokens, decode "
              f"{result.decode_tokens_per_s:.1f} tokens/s; stopped: {result.stopped} (this host's CPU)",
              file=sys.stderr)
    return 0
