"""The accuracy table: dense vs INT8 attention vs block-sparse vs shadowAttn on a real model.

Rows are measured on the same windows in one run; every row is compared with the dense
float model (perplexity, delta, KL(dense || row), top-1 agreement). The dense and shadowAttn rows
run fully compiled (shadowAttn with our kernels and the profile's static scales); the INT8 dense
(the paper's NPU-Full) and block-sparse baselines run through `AttentionHook` in numpy. The group
row selects keys once per KV head for its query heads (`pipeline(selection="group")`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .. import passes
from ..calibrate.profile import ProfileError, SparsityProfile
from .hook import AttentionHook, HookContext, hook_pipeline
from .perplexity import Metrics, progress_bar, windows
from .variants import BlockSparseVariant, DenseVariant, Int8DenseVariant


@dataclass
class Row:
    name: str
    perplexity: float
    delta_pct: float
    kl: float
    top1: float
    recall: float | None = None


def accuracy_table(runner, text: str, profile: SparsityProfile, ctx: int = 512, num_windows: int = 3,
                   keep: float = 0.2, k_min: int = 16, progress: bool = True, log=None) -> list:
    """The rows on `num_windows` windows of `ctx` tokens of `text`; `runner` is a
    `frontend.ModelRunner` of any model (INT8 and block-sparse rows need the profile's scales)."""
    profile.check_model(runner.fingerprint, log)
    wins = windows(runner.tokenizer.encode(text), ctx, num_windows, runner.tokenizer.bos_id)
    hook = AttentionHook()
    hooked = runner.compile(ctx, hook_pipeline(hook))
    blocks = hook.blocks
    profile.check_layer_count(len(blocks))
    if not profile.layers or any(l.q_scales is None or l.v_scales is None for l in profile.layers):
        raise ProfileError("the profile has no calibrated q/k/v scales, which the INT8 row needs: make one with "
                           "`shadowattn calibrate MODEL -o profile.json`")
    compiled = {
        "dense float": runner.compile(ctx, passes.lowering()),
        f"shadowAttn uniform keep {keep}": runner.compile(
            ctx, passes.pipeline(keep=None, profile=profile.retarget(keep, uniform=True), k_min=k_min)),
        f"shadowAttn per-head keep {keep}": runner.compile(
            ctx, passes.pipeline(keep=None, profile=profile.retarget(keep), k_min=k_min)),
        "shadowAttn per-head keep 0.1": runner.compile(
            ctx, passes.pipeline(keep=None, profile=profile.retarget(0.1), k_min=k_min)),
        f"shadowAttn group keep {keep}": runner.compile(
            ctx, passes.pipeline(keep=None, profile=profile.retarget(keep), k_min=k_min, selection="group")),
    }
    hooked_variants = {
        "INT8 dense attention (NPU-Full)": Int8DenseVariant(blocks, profile),
        f"block-sparse 64x64 keep {keep}": BlockSparseVariant(blocks, keep),
    }
    recall = DenseVariant(blocks, recall_keep=keep, k_min=k_min)
    order = ["dense float", "INT8 dense attention (NPU-Full)", f"block-sparse 64x64 keep {keep}",
             f"shadowAttn uniform keep {keep}", f"shadowAttn per-head keep {keep}", "shadowAttn per-head keep 0.1",
             f"shadowAttn group keep {keep}"]
    metrics = {name: Metrics() for name in order}
    with progress_bar(len(wins) * (len(order) + 1), progress, f"eval ctx {ctx}") as step:
        for w in wins:
            dense_logits = compiled["dense float"](w)
            metrics["dense float"].add(dense_logits, w, dense_logits)
            for name in order[1:]:
                if name in compiled:
                    logits = compiled[name](w)
                else:
                    with HookContext(hooked_variants[name]):
                        logits = hooked(w)
                metrics[name].add(logits, w, dense_logits)
                step()
            with HookContext(recall):
                hooked(w)  # dense through the hook, measuring the INT8 pilot's top-k recall
            step()
    base = metrics["dense float"].perplexity
    rows = []
    for name in order:
        m = metrics[name]
        rows.append(Row(name, m.perplexity, 100 * (m.perplexity / base - 1), m.mean_kl, m.top1_agreement,
                        recall.recall if name.startswith("shadowAttn") else None))
    return rows


def format_table(rows, ctx: int, num_windows: int, model: str) -> str:
    head = f"{model}, {num_windows} windows x {ctx} tokens"
    lines = [head, f"{'attention':34s} {'ppl':>8s} {'Δ%':>7s} {'KL':>8s} {'top-1':>7s} {'recall':>7s}"]
    for r in rows:
        rec = f"{100 * r.recall:6.2f}%" if r.recall is not None else f"{'-':>7s}"
        lines.append(f"{r.name:34s} {r.perplexity:8.3f} {r.delta_pct:+7.2f} {r.kl:8.4f} {100 * r.top1:6.2f}% {rec}")
    return "\n".join(lines)


def rows_to_json(rows, **meta) -> str:
    return json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=1)
