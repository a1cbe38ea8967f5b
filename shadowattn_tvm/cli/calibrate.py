"""`shadowattn calibrate MODEL --text FILE --keep R -o profile.json`."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="per-head keep ratios and int8 scale statistics for a model",
                       description="Measure each head's and layer's importance (loss increase when zeroed) on a "
                                   "calibration text and turn it into per-head keep ratios and static scales.")
    p.add_argument("model", help="'smollm2' (the embedded default), a .gguf file or an .onnx export")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json (or a .gguf of the same model) for an .onnx "
                                                     "model (default: the model's own)")
    p.add_argument("--text", default="pydocs", help="a text file, 'pydocs' or 'austen:<novel>' (default pydocs)")
    p.add_argument("--keep", type=float, default=0.2, help="global keep ratio (default 0.2)")
    p.add_argument("--ctx", type=int, nargs="+", default=[128],
                   help="calibration window lengths; importances at several lengths are averaged (default 128)")
    p.add_argument("--windows", type=int, default=1, help="calibration windows per length (default 1)")
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..calibrate.calibrate import calibrate
    from ..calibrate.profile import check_keep
    from ..evaluation.corpus import load_text
    from ..frontend.model import runner_for

    from ._checks import positive, writable_file

    check_keep(args.keep)
    positive("--ctx", *args.ctx)
    positive("--windows", args.windows)
    writable_file("-o", args.output, args.model, args.text, args.tokenizer)
    runner = runner_for(args.model, args.tokenizer)
    text = load_text(args.text)
    runner.tokenizer  # noqa: B018 - fail on a missing tokenizer before compiling anything
    profile = calibrate(runner, text, keep=args.keep, ctx=args.ctx, num_windows=args.windows)
    profile.save(args.output)
    print(f"wrote {args.output}: {len(profile.layers)} layers, keep {profile.keep}, model {profile.model}")
    return 0
