"""Attention variants computed in numpy behind `AttentionHook` (see hook.py).

Each is called per layer with q [B,H,S,D] and k/v [B,Hkv,S,D] (causal self-attention prefill)
and returns [B,H,S,D]. Used for calibration (heads zeroed, scale statistics) and for the
accuracy table's baselines: INT8 attention as an NPU graph runs it, block-sparse estimation.
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

    def __call__(self, layer, q, k, v):
        block = self.blocks[layer]
        kvh = reference.kv_index(block)
        logits = _qk(q, k[:, kvh]) * np.float32(block.scale)
        out = _softmax_pv(_causal(logits), v[:, kvh])
        if self.record is not None:
            self._record(layer, q, k, v)
        if self.recall_keep is not None:
            self._recall(block, q, k, logits)
        for h in range(block.num_heads):
            if layer in self.zero_layers or (layer, h) in self.zero_heads:
                out[:, h] = 0
        return out

    def _record(self, layer, q, k, v):
        stats = self.record.setdefault(layer, {"q": [], "k": [], "v": []})
        for name, x in (("q", q), ("k", k), ("v", v)):
            stats[name].append(np.abs(x).max(axis=(0, 2, 3)) / 127.0)

    def _recall(self, block, q, k, logits):
        """Top-k recall of the INT8 pilot (dynamic per-head scales) against float scores, sampled rows."""
        q8 = reference.quantize(q, reference.absmax_scale(q))
        k8 = reference.quantize(k, reference.absmax_scale(k))
        pilot = reference.pilot_scores(q8, k8, block)
        for b in range(q.shape[0]):
            for h in range(block.num_heads):
                for i in range(self.stride - 1, q.shape[2], self.stride):
                    n = i + 1
                    kk = keep_count(self.recall_keep, q.shape[2], self.k_min, n)
                    if kk >= n:
                        continue
                    truth = np.argpartition(-logits[b, h, i, :n], kk - 1)[:kk]
                    order = np.lexsort((np.arange(n), -pilot[b, h, i, :n].astype(np.int64)))[:kk]
                    self.recall_hits += len(np.intersect1d(truth, order))
                    self.recall_total += kk

    @property
    def recall(self) -> float | None:
        return self.recall_hits / self.recall_total if self.recall_total else None


class Int8DenseVariant:
    """The paper's NPU-Full: Q, K, V and softmax output in int8 with static per-head scales."""

    def __init__(self, blocks, profile):
        self.blocks, self.profile = blocks, profile

    def __call__(self, layer, q, k, v):
        block = self.blocks[layer]
        lp = self.profile.layers[layer]
        if lp.q_scales is None or lp.v_scales is None:
            raise ValueError("INT8 dense attention needs a calibrated profile with q/k/v scales")
        kvh = reference.kv_index(block)
        qs, ks, vs = (np.asarray(s, np.float32) for s in (lp.q_scales, lp.k_scales, lp.v_scales))
        q8, k8, v8 = reference.quantize(q, qs), reference.quantize(k, ks), reference.quantize(v, vs)
        scores = _qk(q8.astype(np.float32), k8[:, kvh].astype(np.float32))
        logits = scores * (qs[:, None, None] * ks[kvh][:, None, None] * np.float32(block.scale))
        probs = _softmax(_causal(logits))
        p8 = np.clip(np.rint(probs * 127.0), 0, 127)  # softmax output in [0, 1]: scale 1/127
        out = np.matmul(p8.astype(np.float32), v8[:, kvh].astype(np.float32))
        return out * (vs[kvh][:, None, None] / 127.0)


class BlockSparseVariant:
    """Block-sparse estimation: mean-pooled 64x64 block scores pick ceil(keep * blocks) key blocks
    per query block (all visible ones if fewer), plus the diagonal block."""

    def __init__(self, blocks, keep: float, block_size: int = 64):
        self.blocks, self.keep, self.bs = blocks, keep, block_size

    def __call__(self, layer, q, k, v):
        block = self.blocks[layer]
        kvh = reference.kv_index(block)
        b, h, s, d = q.shape
        nb = math.ceil(s / self.bs)
        pad = nb * self.bs - s
        qp = np.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, h, nb, self.bs, d).mean(3)
        kp = np.pad(k[:, kvh], ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, h, nb, self.bs, d).mean(3)
        bscore = _qk(qp, kp)
        keep = np.zeros((b, h, nb, nb), bool)
        for qb in range(nb):
            visible = qb + 1
            n = min(visible, max(1, math.ceil(self.keep * nb)))  # the same budget rule as shadowAttn's top-k
            top = np.argsort(-bscore[:, :, qb, :visible], axis=-1, kind="stable")[..., :n]
            np.put_along_axis(keep[:, :, qb], top, True, axis=-1)
            keep[:, :, qb, qb] = True  # the diagonal block always stays
        mask = np.repeat(np.repeat(keep, self.bs, 2), self.bs, 3)[:, :, :s, :s]
        logits = _qk(q, k[:, kvh]) * np.float32(block.scale)
        return _softmax_pv(_causal(np.where(mask, logits, -np.inf)), v[:, kvh])


def _causal(logits):
    s = logits.shape[-1]
    return np.where(np.tri(s, dtype=bool), logits, -np.inf)


def _softmax(logits):
    m = logits.max(-1, keepdims=True)
    e = np.exp(logits - m)
    return e / e.sum(-1, keepdims=True)


def _qk(q, k):
    return np.matmul(q, np.swapaxes(k, -1, -2))


def _softmax_pv(logits, v):
    return np.matmul(_softmax(logits), v)
