"""`calibrate()`: per-head keep ratios and int8 scale statistics for a GGUF Llama model.

One model is compiled with every attention block routed to a numpy hook; the calibration text
is run once dense (recording per-head Q/K/V absmax/127 per window), once per zeroed layer and
once per zeroed head. Importances become ratios with `importance.allocate_ratios`.
"""
from __future__ import annotations

import numpy as np

from ..evaluation.hook import AttentionHook, HookContext, hook_pipeline
from ..evaluation.perplexity import Metrics, windows
from ..evaluation.variants import DenseVariant
from .importance import allocate_ratios, head_shares
from .profile import LayerProfile, SparsityProfile, check_keep


def _progress(total, enabled, desc):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run")


def calibrate(runner, text: str, keep: float = 0.2, ctx: int = 256, num_windows: int = 1,
              progress: bool = True) -> SparsityProfile:
    """Calibrate `runner` (a `LlamaRunner`) on `text`; returns a profile targeting `keep`."""
    keep = check_keep(keep)
    hook = AttentionHook()
    forward = runner.compile(ctx, hook_pipeline(hook))
    blocks = hook.blocks
    if not blocks:
        raise ValueError("the model has no attention block the detection pass understands")
    wins = windows(runner.tokenizer.encode(text).ids, ctx, num_windows, runner.config.bos_id)
    layers, heads = len(blocks), blocks[0].num_heads
    bar = _progress(1 + layers + layers * heads, progress, "calibrate")

    def loss(variant) -> float:
        metrics = Metrics()
        with HookContext(variant):
            for w in wins:
                metrics.add(forward(w), w, None)
        if bar is not None:
            bar.update(1)
        return metrics.nll / metrics.tokens

    stats: dict = {}
    base = loss(DenseVariant(blocks, record=stats))
    layer_imp = np.array([loss(DenseVariant(blocks, zero_layers={j})) - base for j in range(layers)])
    head_imp = np.array([[loss(DenseVariant(blocks, zero_heads={(j, h)})) - base for h in range(heads)]
                         for j in range(layers)])
    if bar is not None:
        bar.close()
    shares = head_shares(head_imp, layer_imp)
    ratios = allocate_ratios(shares, keep)
    out = []
    for j in range(layers):
        q, k, v = (np.stack(stats[j][n]) for n in ("q", "k", "v"))
        out.append(LayerProfile(ratios=tuple(ratios[j]), q_scales=tuple(q.mean(0)), k_scales=tuple(k.mean(0)),
                                v_scales=tuple(v.mean(0)), q_scale_std=tuple(q.std(0)), k_scale_std=tuple(k.std(0)),
                                importance=tuple(shares[j])))
    return SparsityProfile(keep=keep, layers=tuple(out), model=runner.model.fingerprint)
