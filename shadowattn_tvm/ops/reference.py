"""NumPy references for every kernel and for dense attention (tests, demo and recall figures).

They follow the kernels' definitions exactly (same rounding, same tie rule), so a keep < 1
result can be checked element for element, not just "close to dense".
"""
from __future__ import annotations

import numpy as np

from ..block import MASKED_BELOW, AttentionBlock, CausalMode, keep_count
from .pilot import score_shift


def kv_index(block: AttentionBlock) -> np.ndarray:
    return np.asarray(block.kv_heads(), np.int64)


def absmax_scale(x: np.ndarray) -> np.ndarray:
    amax = np.abs(x.astype(np.float32)).max(axis=(0, 2, 3))
    return np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)


def quantize(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    value = np.rint(x.astype(np.float32) / scale.astype(np.float32)[None, :, None, None])
    return np.clip(value, -127, 127).astype(np.int8)


def pilot_scores(q8: np.ndarray, k8: np.ndarray, block: AttentionBlock, out_dtype: str = "int32") -> np.ndarray:
    """int32 Q·Kᵀ of the int8 operands; "int16": s32 >> score_shift(D) (the CPU pilot's option)."""
    k8 = k8[:, kv_index(block)].astype(np.int32)
    scores = np.einsum("bhid,bhjd->bhij", q8.astype(np.int32), k8)
    if out_dtype == "int16":
        return (scores >> score_shift(block.head_dim)).astype(np.int16)
    return scores


def widen_scores(scores: np.ndarray, block: AttentionBlock) -> np.ndarray:
    """int32 scores top-k ranks: int16 pilot scores s16 count as s16 << score_shift(D)."""
    if scores.dtype == np.int16:
        return scores.astype(np.int32) << score_shift(block.head_dim)
    return scores


def visible(block: AttentionBlock, q_len: int, kv_len: int, mask=None) -> np.ndarray:
    """[Bm, Hm, Sq, Skv] bool: which keys each row may select."""
    i = np.arange(q_len)[:, None]
    j = np.arange(kv_len)[None, :]
    if block.causal == CausalMode.TOP_LEFT:
        vis = j <= i
    elif block.causal == CausalMode.BOTTOM_RIGHT:
        vis = j <= i + (kv_len - q_len)
    else:
        vis = np.ones((q_len, kv_len), bool)
    vis = vis[None, None]
    if mask is not None:
        vis = vis & (mask > MASKED_BELOW)
    return vis


def topk_indices(scores, ratios, block, k_min, top_k, mask=None, q_scale=None, k_scale=None):
    """Same rule as ops.topk: ranking, k per row, ties to the lower index, ascending, -1 padded."""
    scores = widen_scores(scores, block)
    b, h, sq, skv = scores.shape
    if mask is not None:
        deq = (q_scale * k_scale[kv_index(block)] * np.float32(block.scale)).astype(np.float32)
        rank = scores.astype(np.float32) * deq[None, :, None, None] + mask.astype(np.float32)
    else:
        rank = scores.astype(np.int64)
    vis = np.broadcast_to(visible(block, sq, skv, mask), scores.shape)
    out = np.full((b, h, sq, top_k), -1, np.int32)
    for bb in range(b):
        for hh in range(h):
            for i in range(sq):
                cand = np.nonzero(vis[bb, hh, i])[0]
                k = min(keep_count(float(ratios[hh]), skv, k_min, len(cand)), top_k)
                order = cand[np.lexsort((cand, -rank[bb, hh, i, cand]))][:k]
                out[bb, hh, i, :k] = np.sort(order)
    return out


def sparse_attention(q, k, v, idx, block: AttentionBlock, mask=None) -> np.ndarray:
    """Float64 softmax·V over the selected keys."""
    kvh = kv_index(block)
    kk = k[:, kvh].astype(np.float64)
    vv = v[:, kvh].astype(np.float64)
    logits = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), kk) * block.scale
    if mask is not None:
        logits = logits + mask.astype(np.float64)
    keep = np.zeros(logits.shape, bool)
    bi, hi, ii, ti = np.nonzero(idx >= 0)
    keep[bi, hi, ii, idx[bi, hi, ii, ti]] = True
    logits = np.where(keep, logits, -np.inf)
    row_max = logits.max(-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    prob = np.exp(logits - row_max)
    denom = prob.sum(-1, keepdims=True)
    out = np.einsum("bhij,bhjd->bhid", prob, vv) / np.where(denom > 0, denom, 1.0)
    return out.astype(q.dtype)


def dense_attention(q, k, v, block: AttentionBlock, mask=None) -> np.ndarray:
    """Float64 dense attention of the canonical block (the keep=1 target)."""
    sq, skv = q.shape[2], k.shape[2]
    vis = np.broadcast_to(visible(block, sq, skv), (q.shape[0], block.num_heads, sq, skv))
    idx = np.where(vis, np.arange(skv, dtype=np.int32), -1)
    return sparse_attention(q, k, v, idx, block, mask)


def topk_recall(float_logits: np.ndarray, idx: np.ndarray, vis: np.ndarray) -> float:
    """Fraction of the float top-k (same k per row as `idx`) that `idx` also selected."""
    hits = total = 0
    flat_idx = idx.reshape(-1, idx.shape[-1])
    flat_logits = float_logits.reshape(-1, float_logits.shape[-1])
    flat_vis = np.broadcast_to(vis, float_logits.shape).reshape(-1, float_logits.shape[-1])
    for row in range(flat_idx.shape[0]):
        chosen = flat_idx[row][flat_idx[row] >= 0]
        k = len(chosen)
        if k == 0 or k == flat_vis[row].sum():
            continue
        logits = np.where(flat_vis[row], flat_logits[row], -np.inf)
        truth = np.argpartition(-logits, k - 1)[:k]
        hits += len(np.intersect1d(truth, chosen))
        total += k
    return hits / total if total else 1.0


def group_heads(block: AttentionBlock, kv: int) -> np.ndarray:
    """The query heads reading KV head `kv` (interleave or tile)."""
    return np.nonzero(kv_index(block) == kv)[0]


def topk_group_indices(scores, ratios, block, k_min, top_k, q_scale, k_scale, mask=None):
    """Group mode (`ops.topk_group`): one selection per (KV head, query row), ranked by
    max over the group's heads of the dequantised logit's gap to the head's row maximum."""
    scores = widen_scores(scores, block)
    b, h, sq, skv = scores.shape
    kvh = kv_index(block)
    deq = (q_scale * k_scale[kvh] * np.float32(block.scale)).astype(np.float32)
    vis = visible(block, sq, skv)[0, 0]
    if mask is not None:
        mask = np.broadcast_to(mask, mask.shape[:2] + (sq, skv))
    out = np.full((b, block.num_kv_heads, sq, top_k), -1, np.int32)
    for bb in range(b):
        for kv in range(block.num_kv_heads):
            for i in range(sq):
                rank = np.full(skv, -np.inf, np.float32)
                for hh in group_heads(block, kv):
                    row = scores[bb, hh, i]
                    if mask is None:
                        ok = vis[i]
                        if not ok.any():
                            continue
                        gap = (row - row[ok].max()).astype(np.float32) * deq[hh]
                    else:
                        m = mask[0 if mask.shape[0] == 1 else bb, 0 if mask.shape[1] == 1 else hh, i].astype(np.float32)
                        ok = vis[i] & (m > MASKED_BELOW)
                        if not ok.any():
                            continue
                        logit = row.astype(np.float32) * deq[hh] + m
                        gap = (logit - logit[ok].max()).astype(np.float32)
                    rank = np.maximum(rank, np.where(ok, gap, -np.inf).astype(np.float32))
                cand = np.nonzero(rank > -np.inf)[0]
                k = min(keep_count(float(ratios[kv]), skv, k_min, len(cand)), top_k)
                order = cand[np.lexsort((cand, -rank[cand]))][:k]
                out[bb, kv, i, :k] = np.sort(order)
    return out


def sparse_attention_group(q, k, v, idx_group, block: AttentionBlock, mask=None) -> np.ndarray:
    """Group mode: every query head uses its KV head's selection idx_group [B,Hkv,Sq,K]."""
    return sparse_attention(q, k, v, idx_group[:, kv_index(block)], block, mask)
