"""The typed description of one attention block, shared by the passes, the kernels and the report.

An `AttentionBlock` is what detection learns about a block and stores as function attributes of
the outlined composite; the split pass and the kernel generators read it back from there.
"""
from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass

#: Additive mask values at or below this count as "masked" (HF uses finfo.min, others -inf or
#: -1e4..-1e9): such keys are never selected and do not count towards a row's valid length L.
MASKED_BELOW = -1.0e4

#: Guards ceil(ratio * L) against float noise (0.2 * 15 = 3.0000000000000004).
_CEIL_EPS = 1e-9


class CausalMode(str, enum.Enum):
    """Which keys a query row may see (see ``R.nn.attention``'s ``causal_mask``)."""

    NONE = "none"
    TOP_LEFT = "top_left"  # key j visible to query i iff j <= i
    BOTTOM_RIGHT = "bottom_right"  # iff j <= i + (kv_len - q_len): chunked prefill


class KVMap(str, enum.Enum):
    """How a query head finds its KV head under GQA/MQA."""

    INTERLEAVE = "interleave"  # repeat_interleave / repeat_kv: kv = h // (heads / kv_heads)
    TILE = "tile"  # tile: kv = h % kv_heads


class ScaleMode(str, enum.Enum):
    """Where the pilot's per-head int8 scales come from."""

    STATIC = "static"  # compile-time constants from a profile, as an NPU graph needs
    DYNAMIC = "dynamic"  # absmax / 127 per head at run time, when no calibration exists


@dataclass(frozen=True)
class AttentionBlock:
    """One attention block in canonical BHSD layout: q [B,H,Sq,D], k/v [B,Hkv,Skv,D(v)]."""

    layer: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    causal: CausalMode
    scale: float
    dtype: str
    kv_map: KVMap = KVMap.INTERLEAVE
    has_mask: bool = False

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def kv_heads(self) -> list:
        """The KV head each query head reads, by query head."""
        if self.kv_map == KVMap.TILE:
            return [h % self.num_kv_heads for h in range(self.num_heads)]
        return [h // self.group for h in range(self.num_heads)]

    def group_ratios(self, ratios) -> list:
        """Keep ratio of each KV head under group selection: the mean of its query heads' ratios."""
        kv_of = self.kv_heads()
        return [sum(r for r, kv in zip(ratios, kv_of) if kv == g) / kv_of.count(g) for g in range(self.num_kv_heads)]

    def to_attrs(self) -> dict:
        attrs = asdict(self)
        attrs["causal"] = self.causal.value
        attrs["kv_map"] = self.kv_map.value
        return {f"shadowattn.{key}": value for key, value in attrs.items()}

    @classmethod
    def from_attrs(cls, attrs) -> "AttentionBlock":
        get = lambda key: attrs[f"shadowattn.{key}"]  # noqa: E731
        return cls(
            layer=int(get("layer")),
            num_heads=int(get("num_heads")),
            num_kv_heads=int(get("num_kv_heads")),
            head_dim=int(get("head_dim")),
            causal=CausalMode(str(get("causal"))),
            scale=float(get("scale")),
            dtype=str(get("dtype")),
            kv_map=KVMap(str(get("kv_map"))),
            has_mask=bool(int(get("has_mask"))),
        )


def keep_count(ratio: float, kv_len: int, k_min: int, visible: int | None = None) -> int:
    """Keys kept in a row: min(V, max(k_min, ceil(ratio * kv_len))) of its V visible keys.

    The budget is a share of the whole KV length, the same for every row (a causal row with
    fewer visible keys keeps them all). A share of each row's visible keys instead starves the
    late rows: on SmolLM2 at 2048 tokens exact float top-k costs +4.9 % perplexity that way and
    +0.8 % this way (README, "top-k rule").
    """
    visible = kv_len if visible is None else visible
    if visible <= 0:
        return 0
    return min(visible, max(k_min, math.ceil(ratio * kv_len - _CEIL_EPS)))


def max_keep_count(max_ratio: float, kv_len, k_min: int):
    """A static bound on `keep_count` over all rows, as an int or a TIR/shape expression.

    ceil(r*L) <= floor(R*L/1000) + 1 for r <= R/1000 and L <= kv_len; integer arithmetic keeps
    it expressible as a symbolic shape when kv_len is symbolic.
    """
    per_mille = math.ceil(max_ratio * 1000 - _CEIL_EPS)
    if isinstance(kv_len, int):
        return min(kv_len, max(k_min, per_mille * kv_len // 1000 + 1))
    from ._compat import tirx  # local: keep this module importable without building IR

    return tirx.min(kv_len, tirx.max(k_min, tirx.floordiv(kv_len * per_mille, 1000) + 1))


CEIL_EPS = _CEIL_EPS
