"""Attention variants computed in numpy behind `AttentionHook` (see hook.py).

Each is called per layer with the block's canonical tensors, q [B,H,Sq,D], k/v [B,Hkv,Skv,D]
and its additive mask (or None), and returns [B,H,Sq,Dv]. Any block detection outlines works:
causal top-left or bottom-right (chunked prefill), sliding windows and padding masks, GQA. Used
for calibration (heads zeroed, scale statistics) and for the accuracy table's baselines: INT8
attention as an NPU graph runs it, block-sparse estimation.
"""
from __future__ import annotations

import math

import numpy as np

from ..block import keep_count
from ..ops import reference


class DenseVariant:
    """Float attention; optionally zeroes chosen heads/layers and records per-head statistics."""

    def __init__(self, blocks, zero_heads=(), zero_layers=(), record: dict | None = None,
                 recall_keep: float | None = None, k_min: int = 16, recall_stride: int = 8):
        self.blocks, self.zero_heads, self.zero_layers = blocks, set(zero_heads), set(zero_layers)
        self.record, self.recall_keep, self.k_min, self.stride = record, recall_keep, k_min, recall_stride
        self.recall_hits = self.recall_total = 0

    def __call__(self, layer, q, k, v, mask=None):
        block = self.blocks[layer]
        kvh = reference.kv_index(block)
        logits = _qk(q, k[:, kvh]) * np.float32(block.scale)
        out = _softmax_pv(_dense_logits(block, logits, mask), v[:, kvh])
        if self.record is not None:
            self._record(layer, q, k, v)
        if self.recall_keep is not None:
            self._recall(block, q, k, logits, mask)
        for h in range(block.num_heads):
            if layer in self.zero_layers or (layer, h) in self.zero_heads:
                out[:, h] = 0
        return out

    def _record(self, layer, q, k, v):
        stats = self.record.setdefault(layer, {"q": [], "k": [], "v": []})
        for name, x in (("q", q), ("k", k), ("v", v)):
            stats[name].append(np.abs(x).max(axis=(0, 2, 3)) / 127.0)

    def _recall(self, block, q, k, logits, mask):
        """Top-k recall of the INT8 pilot (dynamic per-head scales) against float scores, sampled rows
        (each row's visible keys; the float ranking includes the mask, as the kernels' does)."""
        q8 = reference.quantize(q, reference.absmax_scale(q))
        k8 = reference.quantize(k, reference.absmax_scale(k))
        pilot = reference.pilot_scores(q8, k8, block)
        sq, skv = q.shape[2], k.shape[2]
        vis = np.broadcast_to(reference.visible(block, sq, skv, mask), logits.shape)
        ranked = logits if mask is None else logits + mask
        for b in range(q.shape[0]):
            for h in range(block.num_heads):
                for i in range(self.stride - 1, sq, self.stride):
                    keys = np.nonzero(vis[b, h, i])[0]
                    kk = keep_count(self.recall_keep, skv, self.k_min, len(keys))
                    if kk >= len(keys):
                        continue
                    truth = keys[np.argpartition(-ranked[b, h, i, keys], kk - 1)[:kk]]
                    order = keys[np.lexsort((keys, -pilot[b, h, i, keys].astype(np.int64)))[:kk]]
                    self.recall_hits += len(np.intersect1d(truth, order))
                    self.recall_total += kk

    @property
    def recall(self) -> float | None:
        return self.recall_hits / self.recall_total if self.recall_total else None


class Int8DenseVariant:
    """The paper's NPU-Full: Q, K, V and softmax output in int8 with static per-head scales."""

    def __init__(self, blocks, profile):
        self.blocks, self.profile = blocks, profile

    def __call__(self, layer, q, k, v, mask=None):
        block = self.blocks[layer]
        lp = self.profile.layers[layer]
        if lp.q_scales is None or lp.v_scales is None:
            raise ValueError("INT8 dense attention needs a calibrated profile with q/k/v scales")
        kvh = reference.kv_index(block)
        qs, ks, vs = (np.asarray(s, np.float32) for s in (lp.q_scales, lp.k_scales, lp.v_scales))
        q8, k8, v8 = reference.quantize(q, qs), reference.quantize(k, ks), reference.quantize(v, vs)
        scores = _qk(q8.astype(np.float32), k8[:, kvh].astype(np.float32))
        logits = scores * (qs[:, None, None] * ks[kvh][:, None, None] * np.float32(block.scale))
        probs = _softmax(_dense_logits(block, logits, mask))
        p8 = np.clip(np.rint(probs * 127.0), 0, 127)  # softmax output in [0, 1]: scale 1/127
        out = np.matmul(p8.astype(np.float32), v8[:, kvh].astype(np.float32))
        return out * (vs[kvh][:, None, None] / 127.0)


class BlockSparseVariant:
    """Block-sparse estimation: mean-pooled 64x64 block scores pick ceil(keep * blocks) of a query
    block's visible key blocks (all if fewer), plus the block holding its last visible key."""

    def __init__(self, blocks, keep: float, block_size: int = 64):
        self.blocks, self.keep, self.bs = blocks, keep, block_size

    def __call__(self, layer, q, k, v, mask=None):
        block = self.blocks[layer]
        kvh = reference.kv_index(block)
        b, h, sq, d = q.shape
        skv = k.shape[2]
        bs = self.bs
        nq, nk = math.ceil(sq / bs), math.ceil(skv / bs)
        qp = np.pad(q, ((0, 0), (0, 0), (0, nq * bs - sq), (0, 0))).reshape(b, h, nq, bs, d).mean(3)
        kp = np.pad(k[:, kvh], ((0, 0), (0, 0), (0, nk * bs - skv), (0, 0))).reshape(b, h, nk, bs, d).mean(3)
        bscore = _qk(qp, kp)
        vis = np.broadcast_to(reference.visible(block, sq, skv, mask), (b, h, sq, skv))
        padded = np.pad(vis, ((0, 0), (0, 0), (0, nq * bs - sq), (0, nk * bs - skv)))
        block_vis = padded.reshape(b, h, nq, bs, nk, bs).any(axis=(3, 5))  # [b, h, nq, nk]
        keep = np.zeros((b, h, nq, nk), bool)
        budget = max(1, math.ceil(self.keep * nk))  # the same budget rule as shadowAttn's top-k
        for bb in range(b):
            for hh in range(h):
                for qb in range(nq):
                    cand = np.nonzero(block_vis[bb, hh, qb])[0]
                    if not len(cand):
                        continue
                    top = cand[np.argsort(-bscore[bb, hh, qb, cand], kind="stable")[:budget]]
                    keep[bb, hh, qb, top] = True
                    keep[bb, hh, qb, cand[-1]] = True  # the diagonal block always stays
        kept = np.repeat(np.repeat(keep, bs, 2), bs, 3)[:, :, :sq, :skv]
        logits = _dense_logits(block, _qk(q, k[:, kvh]) * np.float32(block.scale), mask)
        return _softmax_pv(np.where(kept, logits, -np.inf), v[:, kvh])


def _dense_logits(block, logits, mask):
    """What the dense block feeds its softmax: scaled scores plus the mask, causal keys only (a row
    that sees no key then gets what dense attention gives it)."""
    if mask is not None:
        logits = logits + mask
    return np.where(reference.visible(block, logits.shape[-2], logits.shape[-1]), logits, -np.inf)


def _softmax(logits):
    m = logits.max(-1, keepdims=True)
    e = np.exp(logits - m)
    return e / e.sum(-1, keepdims=True)


def _qk(q, k):
    return np.matmul(q, np.swapaxes(k, -1, -2))


def _softmax_pv(logits, v):
    return np.matmul(_softmax(logits), v)
