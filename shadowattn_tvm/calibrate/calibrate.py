"""`calibrate()`: per-head keep ratios and int8 scale statistics for any model detection understands.

The model is compiled with every attention block routed to a numpy hook (masks included:
sliding windows, padding, chunked prefill); the calibration text is run once dense (recording
per-head Q/K/V absmax/127 per window), once per zeroed layer and once per zeroed head, at each
context length asked for. Importance measured at a short context starves heads that matter at
long ones (README, "Top-k rule"), so each length's shares are normalised to sum 1 and averaged;
scale statistics pool every window of every length. Shares become ratios with
`importance.allocate_ratios`.
"""
from __future__ import annotations

import numpy as np

from ..evaluation.hook import AttentionHook, HookContext, hook_pipeline
from ..evaluation.perplexity import Metrics, progress_bar, windows
from ..evaluation.variants import DenseVariant
from .importance import allocate_ratios, head_shares
from .profile import LayerProfile, SparsityProfile, check_keep


def _blocks_at(runner, ctx: int):
    hook = AttentionHook()
    forward = runner.compile(ctx, hook_pipeline(hook))
    if not hook.blocks:
        reasons = sorted({c.reason for c in hook.report.dense})
        found = (f"every attention candidate ({len(hook.report.candidates)}) stays dense: {'; '.join(reasons)}"
                 if reasons else "no softmax·V or R.nn.attention block was found")
        raise ValueError(f"{runner.name} has no attention block the pass set can rewrite, so there is nothing to "
                         f"calibrate: {found}")
    return forward, hook.blocks


def _heads(blocks) -> tuple:
    counts = {b.num_heads for b in blocks.values()}
    if len(counts) != 1:
        raise ValueError(f"layers have different head counts {sorted(counts)}: calibration needs one head count")
    return len(blocks), counts.pop()


def calibrate(runner, text: str, keep: float = 0.2, ctx=(256,), num_windows: int = 1,
              progress: bool = True) -> SparsityProfile:
    """Calibrate `runner` (a `frontend.ModelRunner`) on `text` at each length in `ctx`; returns a
    profile targeting `keep` (ratios averaged over the lengths' normalised importances)."""
    keep = check_keep(keep)
    ctxs = (ctx,) if isinstance(ctx, int) else tuple(ctx)
    ids = runner.tokenizer.encode(text)
    bos = runner.tokenizer.bos_id
    stats: dict = {}
    shares, shape = [], None
    for n in ctxs:
        wins = windows(ids, n, num_windows, bos)
        forward, blocks = _blocks_at(runner, n)
        layers, heads = _heads(blocks)
        if shape not in (None, (layers, heads)):
            raise ValueError(f"the model has {shape} (layers, heads) at one length and {(layers, heads)} at {n}")
        shape = (layers, heads)
        with progress_bar(1 + layers + layers * heads, progress, f"calibrate ctx {n}") as step:

            def loss(variant) -> float:
                metrics = Metrics()
                with HookContext(variant):
                    for w in wins:
                        metrics.add(forward(w), w, None)
                step()
                return metrics.nll / metrics.tokens

            base = loss(DenseVariant(blocks, record=stats))
            layer_imp = np.array([loss(DenseVariant(blocks, zero_layers={j})) - base for j in range(layers)])
            head_imp = np.array([[loss(DenseVariant(blocks, zero_heads={(j, h)})) - base for h in range(heads)]
                                 for j in range(layers)])
        share = head_shares(head_imp, layer_imp)
        shares.append(share / share.sum())
    share = np.mean(shares, axis=0)
    ratios = allocate_ratios(share, keep)
    out = []
    for j in range(shape[0]):
        q, k, v = (np.stack(stats[j][n]) for n in ("q", "k", "v"))
        out.append(LayerProfile(ratios=tuple(ratios[j]), q_scales=tuple(q.mean(0)), k_scales=tuple(k.mean(0)),
                                v_scales=tuple(v.mean(0)), q_scale_std=tuple(q.std(0)), k_scale_std=tuple(k.std(0)),
                                importance=tuple(share[j])))
    return SparsityProfile(keep=keep, layers=tuple(out), model=runner.fingerprint)


def sample_scale_stats(runner, seq_len: int, text: str | None = None, seed: int = 0) -> tuple:
    """Per-layer `ScaleStats` from one dense run at `seq_len` tokens of `text` (random token ids when
    there is no text or tokenizer), spread `SYNTHETIC_SPREAD`: what an NPU build uses when no
    calibrated profile is given (`shadowattn calibrate` measures the real spread)."""
    from ..npu.buckets import SYNTHETIC_SPREAD, ScaleStats, StatsSource
    from ..tokenizer import TokenizerError

    forward, blocks = _blocks_at(runner, seq_len)
    ids = []
    if text is not None:
        try:
            ids = runner.tokenizer.encode(text)[:seq_len]
        except TokenizerError:
            ids = []
    if len(ids) < seq_len:
        ids = np.random.default_rng(seed).integers(0, forward.vocab, seq_len)
    stats: dict = {}
    with HookContext(DenseVariant(blocks, record=stats)):
        forward(ids)
    out = []
    for j in range(len(blocks)):
        q, k = stats[j]["q"][0], stats[j]["k"][0]
        q, k = np.where(q > 0, q, 1 / 127), np.where(k > 0, k, 1 / 127)
        out.append(ScaleStats(q, SYNTHETIC_SPREAD * q, k, SYNTHETIC_SPREAD * k, StatsSource.SAMPLES))
    return tuple(out)
