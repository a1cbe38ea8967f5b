"""`shadowattn eval MODEL --text FILE --ctx N --windows W --json OUT`: the accuracy table."""
from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="accuracy table: dense vs INT8 vs block-sparse vs shadowAttn",
                       description="Perplexity, KL to dense, top-1 agreement and INT8 pilot top-k recall of each "
                                   "attention variant on the same windows of a text.")
    p.add_argument("model", help="'smollm2' (the embedded default), a .gguf file or an .onnx export")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json (or a .gguf of the same model) for an .onnx "
                                                     "model (default: the model's own)")
    p.add_argument("--text", default="austen:prideprejudice", help="text file, 'austen:<novel>' or 'pydocs'")
    p.add_argument("--profile", help="calibrated profile JSON (default: the shipped SmolLM2 profile)")
    p.add_argument("--ctx", type=int, nargs="+", default=[512], help="context lengths (default 512)")
    p.add_argument("--windows", type=int, default=3, help="windows per context (default 3)")
    p.add_argument("--keep", type=float, default=0.2)
    p.add_argument("--json", help="write the rows as JSON here")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from ..calibrate.profile import SHIPPED_PROFILE, SparsityProfile, check_keep
    from ..evaluation.accuracy import accuracy_table, format_table
    from ..evaluation.corpus import load_text
    from ..frontend.model import runner_for
    from ..frontend.source import open_model
    from ._checks import positive, writable_file

    check_keep(args.keep)
    positive("--ctx", *args.ctx)
    positive("--windows", args.windows)
    writable_file("--json", args.json, args.model, args.text, args.tokenizer, args.profile)
    if args.profile is None and args.model != "smollm2":
        open_model(args.model, args.tokenizer)  # an unknown or missing model is named first
        raise SystemExit("--profile is required for models other than smollm2 (the INT8 rows need calibrated "
                         "scales): run `shadowattn calibrate MODEL -o profile.json` first")
    runner = runner_for(args.model, args.tokenizer)
    runner.tokenizer  # noqa: B018 - fail on a missing tokenizer before loading or compiling anything
    profile = SparsityProfile.load(Path(args.profile) if args.profile else SHIPPED_PROFILE)
    text = load_text(args.text)
    results = {}
    for ctx in args.ctx:
        rows = accuracy_table(runner, text, profile, ctx=ctx, num_windows=args.windows, keep=args.keep,
                              log=lambda line: print(line, file=sys.stderr))
        print(format_table(rows, ctx, args.windows, runner.name))
        results[str(ctx)] = [r.__dict__ for r in rows]
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "text": args.text, "windows": args.windows,
                                               "contexts": results}, indent=1))
    return 0
