"""Launch units: how one attention block's pilot is cut into static NPU launches.

A unit is (batch row, KV group, query chunk). Its heads are the query heads sharing one KV head
(the static launch group: SmolLM2 3 groups of 3, Qwen2-0.5B 2 groups of 7), fused into one
graph. Its query rows form a chunk, and its K is padded with zeros to a KV length bucket.

Chunks of a causal block end on the KV bucket ladder (in key positions). The CPU-side top-k
derives a row's visible keys from the shape of its score tensor (`CausalMode.BOTTOM_RIGHT`:
row r of an [Sq, Skv] tile sees keys j <= r + Skv - Sq), so a chunk of rows [r0, r0 + q_rows)
whose graph has kv_len = r0 + P + q_rows keys (P = Skv - Sq of the block) needs neither a crop
of the scores nor a mask: the padding of a chunk that runs past the sequence is in query rows
(zeros, outputs dropped), whose keys beyond the sequence are the zero-padded K rows. With the
default uniform ladder (every 256 keys up to 4096) every chunk has 256 rows; a geometric
ladder (512, 1024, 2048, 4096) gives chunks of 512, 512, 1024, 2048 rows.

A non-causal block keeps every key visible, so its padded keys must be hidden by its additive
mask (padded with "masked" values); without a mask its KV length must itself be a bucket.
Its rows are cut into chunks of `q_chunk`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..block import AttentionBlock, CausalMode, KVMap, max_keep_count
from ..npu_abi import GEOMETRY as _GEOMETRY
from ..npu_abi import geometry_dict


class KVBucketError(ValueError):
    """A block's KV length (or shape) has no NPU graph bucket."""


@dataclass(frozen=True)
class LaunchUnit:
    """One NPU launch and the CPU work that consumes it."""

    layer: int
    batch: int  # batch row b
    head0: int  # first query head of the group
    head_stride: int  # 1 (interleaved GQA) or num_kv_heads (tiled GQA)
    kv_head: int  # the group's KV head
    row0: int  # first query row of the chunk
    rows: int  # real query rows
    kv_valid: int  # real keys staged (the rest of kv_len is zeros)
    fused: int  # heads in the launch
    q_rows: int  # rows of the graph (>= rows; the excess is zero padding)
    kv_len: int  # KV length bucket of the graph
    top_k: int  # width of the top-k index tensor
    chunk: int  # chunk index along the query rows

    @property
    def key(self) -> str:
        return f"L{self.layer}.b{self.batch}.g{self.kv_head}.c{self.chunk}"

    @property
    def heads(self) -> tuple:
        return tuple(self.head0 + f * self.head_stride for f in range(self.fused))

    def geometry(self) -> tuple:
        """The unit as integers, in the order `from_geometry` reads (an R.shape in the IR)."""
        return tuple(int(getattr(self, name)) for name in _GEOMETRY)

    @classmethod
    def from_geometry(cls, geometry) -> "LaunchUnit":
        return cls(**geometry_dict(geometry))


def causal_offset(block: AttentionBlock, q_len: int, kv_len: int) -> int | None:
    """P with "row r sees keys j <= r + P", or None for a non-causal block."""
    if block.causal == CausalMode.TOP_LEFT:
        return 0
    if block.causal == CausalMode.BOTTOM_RIGHT:
        return kv_len - q_len
    return None


def plan_units(block: AttentionBlock, batch: int, q_len: int, kv_len: int, ratios, k_min: int,
               kv_buckets: tuple, q_chunk: int) -> tuple:
    """All launch units of one block, batch-major, then KV group, then chunk."""
    ladder = tuple(sorted(set(int(b) for b in kv_buckets)))
    if kv_len > ladder[-1]:
        raise KVBucketError(
            f"attention layer {block.layer}: KV length {kv_len} is beyond the largest NPU KV bucket "
            f"{ladder[-1]} (kv_buckets={_short(ladder)}); add a bucket >= {kv_len} to NPUOptions.kv_buckets, "
            "or compile without npu= (the pilot then stays one CPU kernel)"
        )
    chunks = _chunks(block, q_len, kv_len, ladder, q_chunk)
    group = block.group
    units = []
    for b in range(batch):
        for g in range(block.num_kv_heads):
            if block.kv_map == KVMap.TILE:
                head0, stride = g, block.num_kv_heads
            else:
                head0, stride = g * group, 1
            top = max(float(ratios[head0 + f * stride]) for f in range(group))
            for j, (row0, rows, q_rows, kv_bucket) in enumerate(chunks):
                units.append(LaunchUnit(
                    layer=block.layer, batch=b, head0=head0, head_stride=stride, kv_head=g, row0=row0,
                    rows=rows, kv_valid=min(kv_len, kv_bucket), fused=group, q_rows=q_rows, kv_len=kv_bucket,
                    top_k=int(max_keep_count(unit_ratio(top, kv_len, kv_bucket), kv_bucket, k_min)), chunk=j))
    return tuple(units)


def unit_ratio(ratio, kv_len: int, kv_bucket: int):
    """The ratio a unit's top-k gets so that its budget ceil(r * kv_bucket) is the block's
    ceil(ratio * kv_len): a row's budget is a share of the real KV length, not of the bucket."""
    return ratio * (kv_len / kv_bucket)


def _chunks(block, q_len, kv_len, ladder, q_chunk):
    """[(row0, rows, q_rows, kv_bucket)] covering rows [0, q_len)."""
    offset = causal_offset(block, q_len, kv_len)
    if offset is None:
        fits = [b for b in ladder if b >= kv_len]
        bucket = fits[0]
        if bucket != kv_len and not block.has_mask:
            raise KVBucketError(
                f"attention layer {block.layer} is not causal and has no mask, so padded keys cannot be "
                f"hidden from top-k: its KV length {kv_len} must be one of the NPU KV buckets "
                f"(kv_buckets={_short(ladder)}); add {kv_len} to NPUOptions.kv_buckets"
            )
        return [(r, min(q_chunk, q_len - r), min(q_chunk, q_len - r), bucket) for r in range(0, q_len, q_chunk)]
    if offset < 0:
        raise KVBucketError(f"attention layer {block.layer}: bottom-right causal with fewer keys ({kv_len}) than "
                            f"queries ({q_len}) leaves rows without keys; not supported on the NPU path")
    out, prev = [], 0
    for bucket in ladder:
        row0, row_end = max(0, prev - offset), min(q_len, bucket - offset)
        prev = bucket
        if row_end <= row0:
            continue
        out.append((row0, row_end - row0, bucket - offset - row0, bucket))
        if bucket >= kv_len:
            break
    return out


def _short(ladder) -> str:
    if len(ladder) <= 6:
        return str(tuple(ladder))
    return f"({ladder[0]}, {ladder[1]}, ..., {ladder[-1]})"


__all__ = ["LaunchUnit", "KVBucketError", "plan_units", "causal_offset"]
