"""Random attention graphs for the pass-safety fuzzer (`tests/passes/test_fuzz.py`).

`random_case(seed)` draws one Relax module and its inputs over batch, heads, GQA/MQA forms, head
dims, query/KV lengths (chunked prefill), dtypes, layouts (BSNH, BHSD, 3-D [B·H,S,D]), scale
placement (including a negative one), masks (none, causal as a constant or from aranges,
bottom-right, sliding window, padding, causal + padding with rows that see no key, ALiBi-like
biases; fills -inf, finfo.min, -1e9), ``R.nn.attention``, and near misses that are not attention
(softmax over the query axis, a soft cap between Q·Kᵀ and softmax, a data-dependent scale).

Each case also carries its canonical description (Q, K, V in BHSD at the query head count,
the scale, the full additive mask) so `topk_reference` can say what a low keep must give: the
documented rule of `ops.topk`/`ops.sparse_attention`, with the INT8 pilot's ranking (exact) or
the float64 one (what the pilot approximates).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._compat import relax
from ..block import MASKED_BELOW, keep_count

MASKS = ("none", "causal_const", "causal_where", "window", "padding", "padded_causal", "alibi")
GQA = ("none", "repeat", "expand", "tile", "broadcast_to", "matmul_broadcast")
SCALES = ("multiply", "divide", "on_q", "on_k", "none", "negative")
NEAR_MISSES = ("softmax_over_queries", "soft_cap", "data_scale")


@dataclass
class FuzzCase:
    seed: int
    desc: dict
    mod: object
    inputs: list
    attention: bool  # False: a near miss, which must stay dense
    q: np.ndarray = None  # canonical float64 [B,H,Sq,D] (K/V repeated to H heads)
    k: np.ndarray = None
    v: np.ndarray = None
    scale: float = 1.0
    mask: np.ndarray | None = None  # full additive mask [B|1, H|1, Sq, Skv], causal included
    extra: dict = field(default_factory=dict)

    def label(self) -> str:
        return f"seed {self.seed}: " + ", ".join(f"{k}={v}" for k, v in self.desc.items())


def _pick(rng, options, weights=None):
    return options[int(rng.choice(len(options), p=weights))]


def random_case(seed: int) -> FuzzCase:
    rng = np.random.default_rng(seed)
    dtype = _pick(rng, ("float32", "float16"), [0.75, 0.25])
    batch = int(rng.integers(1, 3))
    heads = _pick(rng, (1, 2, 4, 6, 8))
    head_dim = _pick(rng, (16, 32, 64, 24), [0.3, 0.35, 0.25, 0.1])
    kv_len = int(rng.integers(8, 97))
    q_len = kv_len if rng.random() < 0.7 else int(rng.integers(1, kv_len + 1))
    layout = _pick(rng, ("bsnh", "bhsd", "3d"), [0.5, 0.35, 0.15])
    batch = 1 if layout == "3d" else batch  # [B·H, S, D] with per-head masks: one batch row
    gqa = "none" if layout == "3d" or heads == 1 else _pick(rng, GQA)
    divisors = [d for d in range(1, heads) if heads % d == 0]
    kv_heads = {"none": heads, "broadcast_to": 1, "matmul_broadcast": 1}.get(gqa) or _pick(rng, divisors)
    mask = _pick(rng, MASKS)
    if layout == "3d" and mask in ("padding", "padded_causal"):
        mask = "causal_const"
    fill = _pick(rng, ("-inf", "min", "-1e9") if dtype == "float32" else ("-inf", "min"))
    fill_value = float(np.finfo(dtype).min) if fill == "min" else float(fill)
    desc = dict(dtype=dtype, batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim, q_len=q_len,
                kv_len=kv_len, layout=layout, gqa=gqa, mask=mask, fill=fill,
                scale=_pick(rng, SCALES, [0.35, 0.15, 0.15, 0.12, 0.15, 0.08]),
                softmax_fp32=dtype == "float16" and rng.random() < 0.5)
    near_miss = rng.random() < 0.1
    if near_miss:
        desc["near_miss"] = _pick(rng, NEAR_MISSES)
    elif layout == "bsnh" and gqa == "none" and dtype == "float32" and mask in ("none", "causal_const", "padding") \
            and rng.random() < 0.4:
        desc["form"] = "nn.attention"
    return _build(seed, rng, desc, fill_value)


def _canonical_mask(desc, rng, fill):
    """(full additive mask [Bm,Hm,Sq,Skv] float64 or None, the graph's mask input or constant)."""
    b, h, sq, skv, kind = desc["batch"], desc["heads"], desc["q_len"], desc["kv_len"], desc["mask"]
    i, j = np.arange(sq)[:, None], np.arange(skv)[None, :]
    off = skv - sq
    causal = j <= i + off
    if kind == "none":
        return None
    if kind in ("causal_const", "causal_where"):
        return np.where(causal, 0.0, fill)[None, None]
    if kind == "window":
        width = int(rng.integers(2, max(3, skv // 2)))
        return np.where(causal & (j > i + off - width), 0.0, fill)[None, None]
    if kind == "alibi":
        slopes = 2.0 ** (-8.0 * (np.arange(h) + 1) / h)
        bias = -slopes[:, None, None] * (i + off - j)[None]
        return np.where(causal[None], bias, fill)[None]
    pads = [0] + [int(rng.integers(1, skv)) for _ in range(b - 1)]
    if kind == "padding":
        m = np.zeros((b, 1, 1, skv))
        for row, pad in enumerate(pads):
            m[row, ..., :pad] = fill
        return np.broadcast_to(m, (b, 1, sq, skv)).copy()
    m = np.where(causal, 0.0, fill)[None, None].repeat(b, axis=0)  # padded_causal: some rows see no key
    for row, pad in enumerate(pads):
        m[row, ..., :max(pad, 1 if row else 0)] = fill
    return m


def _build(seed, rng, d, fill) -> FuzzCase:
    b, h, hkv, dd, sq, skv, dt = (d[x] for x in ("batch", "heads", "kv_heads", "head_dim", "q_len", "kv_len",
                                                 "dtype"))
    full_mask = _canonical_mask(d, rng, fill)
    q = 1.5 * rng.standard_normal((b, h, sq, dd))
    k = 1.5 * rng.standard_normal((b, hkv, skv, dd))
    v = rng.standard_normal((b, hkv, skv, dd))
    q, k, v = (x.astype(dt) for x in (q, k, v))
    scale = {"negative": -1.0}.get(d["scale"], 1.0) / math.sqrt(dd) if d["scale"] != "none" else 1.0
    if d["layout"] == "3d":
        inputs = [x.reshape(b * x.shape[1], x.shape[2], dd) for x in (q, k, v)]
    elif d["layout"] == "bsnh":
        inputs = [x.transpose(0, 2, 1, 3).copy() for x in (q, k, v)]
    else:
        inputs = [q, k, v]
    mask_param = d["mask"] in ("padding", "padded_causal")
    if mask_param:
        m = full_mask if d["mask"] == "padded_causal" else full_mask[:, :, :1]
        inputs.append(m.astype(dt))
    mod = _graph(d, [x.shape for x in inputs], scale, full_mask, mask_param)
    if d["layout"] == "3d":
        q, k, v = (x.reshape(1, -1, x.shape[-2], dd) for x in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    kk, vv = ((np.tile(x, (1, rep, 1, 1)) if d["gqa"] == "tile" else np.repeat(x, rep, axis=1)) for x in (k, v))
    return FuzzCase(seed, d, mod, inputs, "near_miss" not in d, q.astype(np.float64), kk.astype(np.float64),
                    vv.astype(np.float64), scale, full_mask)


def _graph(d, shapes, scale, full_mask, mask_param):
    dt = d["dtype"]
    params = [relax.Var(n, relax.TensorType(list(s), dt)) for n, s in zip(("q", "k", "v", "mask"), shapes)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = (_fused if d.get("form") == "nn.attention" else _explicit)(bb, d, params, scale, full_mask,
                                                                              mask_param)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


def _fused(bb, d, params, scale, full_mask, mask_param):
    q, k, v = params[:3]
    if mask_param:
        return bb.emit(relax.op.nn.attention(q, k, v, params[3], scale=scale))
    causal = "BottomRight" if d["mask"] == "causal_const" else None
    return bb.emit(relax.op.nn.attention(q, k, v, scale=scale, causal_mask=causal))


def _explicit(bb, d, params, scale, full_mask, mask_param):
    R, dt = relax.op, d["dtype"]
    q, k, v = params[:3]
    if d["layout"] == "bsnh":
        q, k, v = (bb.emit(R.permute_dims(x, [0, 2, 1, 3])) for x in (q, k, v))
    k, v = (_repeat(bb, d, x) for x in (k, v))
    c = lambda x: relax.const(x, dt)  # noqa: E731
    style = d["scale"]
    if style == "on_q":
        q = bb.emit(R.multiply(q, c(scale)))
    if style == "on_k":
        k = bb.emit(R.multiply(k, c(scale)))
    rank = len(q.ty.shape.values)
    s = bb.emit(R.matmul(q, R.permute_dims(k, list(range(rank - 2)) + [rank - 1, rank - 2])))
    if style in ("multiply", "negative"):
        s = bb.emit(R.multiply(s, c(scale)))
    elif style == "divide":
        s = bb.emit(R.divide(s, c(1.0 / scale)))
    miss = d.get("near_miss")
    if miss == "data_scale":
        s = bb.emit(R.multiply(s, R.mean(q, axis=[-1], keepdims=True)))
    if miss == "soft_cap":
        s = bb.emit(R.multiply(R.tanh(R.divide(s, c(30.0))), c(30.0)))
    s = _mask(bb, d, s, params, full_mask, mask_param)
    axis = -2 if miss == "softmax_over_queries" else -1
    if d["softmax_fp32"]:
        p = bb.emit(R.astype(R.nn.softmax(R.astype(s, "float32"), axis=axis), dt))
    else:
        p = bb.emit(R.nn.softmax(s, axis=axis))
    o = bb.emit(R.matmul(p, v))
    return bb.emit(R.permute_dims(o, [0, 2, 1, 3])) if d["layout"] == "bsnh" else o


def _repeat(bb, d, x):
    R, form = relax.op, d["gqa"]
    group = d["heads"] // d["kv_heads"]
    if form in ("none", "matmul_broadcast"):
        return x
    if form == "repeat":
        return bb.emit(R.repeat(x, group, axis=1))
    if form == "tile":
        return bb.emit(R.tile(x, [1, group, 1, 1]))
    b, hkv, s, dd = x.ty.shape.values
    if form == "broadcast_to":
        return bb.emit(R.broadcast_to(x, relax.ShapeExpr([b, d["heads"], s, dd])))
    e = bb.emit(R.broadcast_to(R.expand_dims(x, 2), relax.ShapeExpr([b, hkv, group, s, dd])))
    return bb.emit(R.reshape(e, relax.ShapeExpr([b, hkv * group, s, dd])))


def _mask(bb, d, s, params, full_mask, mask_param):
    R, dt, kind = relax.op, d["dtype"], d["mask"]
    if kind == "none":
        return s
    if mask_param:
        return bb.emit(R.add(s, params[3]))
    if kind == "causal_where":  # where(j <= i + off, s, fill) from aranges
        sq, skv = d["q_len"], d["kv_len"]
        i = bb.emit(R.reshape(R.arange(relax.prim_value(skv - sq), relax.prim_value(skv), dtype="int64"),
                              relax.ShapeExpr([sq, 1])))
        j = bb.emit(R.arange(relax.prim_value(0), relax.prim_value(skv), dtype="int64"))
        fill = float(np.finfo(dt).min) if d["fill"] == "min" else float(d["fill"])
        return bb.emit(R.where(bb.emit(R.less_equal(j, i)), s, relax.const(fill, dt)))
    const = full_mask if d["layout"] != "3d" else full_mask.reshape(-1, *full_mask.shape[2:])
    return bb.emit(R.add(s, relax.const(const.astype(dt), dt)))


def topk_reference(case: FuzzCase, keep: float, k_min: int, ranking: str = "float") -> np.ndarray:
    """The documented rule, canonical layout: per (head, row) keep k = min(V, max(k_min,
    ceil(keep·Skv))) of the V visible keys (mask > MASKED_BELOW, causal included), softmax over
    them in float64; a row with V = 0 gets the dense row (NaN if every logit is -inf).

    ranking "float": keys ranked by the float64 logit; "int8": as the build ranks them, by the
    INT8 pilot's int32 Q·Kᵀ with dynamic absmax scales, plus the mask when there is one
    (`ops.reference`), ties to the lower index."""
    from ..ops import reference as ref

    scores = np.einsum("bhid,bhjd->bhij", case.q, case.k) * case.scale
    logits = scores + case.mask if case.mask is not None else scores
    # a row without a visible key is the dense row, whose logits the graph forms in its dtype
    # (a finite fill absorbs the scores there): form them the same way
    dt = np.dtype(case.desc["dtype"])
    blind = (scores.astype(dt) + case.mask.astype(dt) if case.mask is not None else scores).astype(np.float64)
    rank = logits
    if ranking == "int8":
        qs, ks = ref.absmax_scale(case.q.astype(dt)), ref.absmax_scale(case.k.astype(dt))
        pilot = np.einsum("bhid,bhjd->bhij", ref.quantize(case.q.astype(dt), qs).astype(np.int64),
                          ref.quantize(case.k.astype(dt), ks).astype(np.int64))
        deq = (qs * ks * np.float32(case.scale)).astype(np.float32)[None, :, None, None]
        rank = pilot if case.mask is None else pilot.astype(np.float32) * deq + case.mask.astype(np.float32)
    shape = logits.shape
    visible = np.broadcast_to(case.mask > MASKED_BELOW, shape) if case.mask is not None else np.ones(shape, bool)
    out = np.empty(shape[:3] + (case.v.shape[-1],))
    with np.errstate(invalid="ignore", divide="ignore"):
        for idx in np.ndindex(*shape[:3]):
            row, vis = logits[idx], visible[idx]
            n = int(vis.sum())
            if n == 0:
                w = np.exp(blind[idx] - blind[idx].max())
            else:
                k = keep_count(keep, shape[3], k_min, n)
                cand = np.nonzero(vis)[0]
                chosen = cand[np.argsort(-rank[idx][cand], kind="stable")[:k]]
                w = np.zeros(shape[3])
                w[chosen] = np.exp(row[chosen] - row[chosen].max())
            out[idx] = (w / w.sum()) @ case.v[idx[0], idx[1]]
    return out


def to_canonical(case: FuzzCase, out: np.ndarray) -> np.ndarray:
    """A module output in the canonical [B,H,Sq,Dv] layout of the references."""
    if case.desc["layout"] == "bsnh":
        return out.transpose(0, 2, 1, 3)
    if case.desc["layout"] == "3d":
        return out[None]
    return out


__all__ = ["FuzzCase", "random_case", "topk_reference", "to_canonical"]
