"""`AttentionReport`: every attention candidate the passes saw, rewritten or left dense and why."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


def internal_error(stage: str, err: Exception) -> str:
    """The report's reason for a block a pass left dense because of an internal error."""
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"internal error while {stage} the block, left dense: {type(err).__name__}: {first}"


@dataclass
class Candidate:
    function: str
    form: str  # "softmax" (explicit matmul-softmax-matmul) or "nn.attention"
    status: str  # "rewritten" | "dense"
    reason: str = ""
    layer: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    causal: str | None = None
    mask: str | None = None  # "none" | "causal" | "additive"
    dtype: str | None = None
    q_len: str | None = None
    kv_len: str | None = None


@dataclass
class AttentionReport:
    """What `DetectAttention` found (and `SplitSparseAttention` decided); in the IR as
    ``ir_attrs.REPORT``, read back with `ir_attrs.attention_report`."""

    candidates: list = field(default_factory=list)

    def add(self, candidate: Candidate) -> None:
        self.candidates.append(candidate)

    def mark_dense(self, layer: int, reason: str, function: str | None = None) -> None:
        """A later pass left the rewritten block `layer` (of `function`, or of every function) dense."""
        for c in self.candidates:
            if c.status == "rewritten" and c.layer == layer and function in (None, c.function):
                c.status, c.reason = "dense", reason

    def clear(self) -> None:
        self.candidates.clear()

    @property
    def rewritten(self) -> list:
        return [c for c in self.candidates if c.status == "rewritten"]

    @property
    def dense(self) -> list:
        return [c for c in self.candidates if c.status != "rewritten"]

    def summary(self) -> str:
        return f"{len(self.rewritten)}/{len(self.candidates)} attention blocks rewritten"

    def to_json(self) -> dict:
        return {"summary": self.summary(), "candidates": [asdict(c) for c in self.candidates]}

    @classmethod
    def from_json(cls, data: dict) -> "AttentionReport":
        return cls([Candidate(**c) for c in data["candidates"]])

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    def table(self) -> str:
        head = ("function", "layer", "form", "heads", "kv", "d", "mask", "dtype", "q_len", "kv_len", "status")
        rows = [head]
        for c in self.candidates:
            status = c.status if not c.reason else f"{c.status}: {c.reason}"
            mask = c.causal if c.causal and c.causal != "none" else (c.mask or "-")
            rows.append(tuple(str(x if x is not None else "-") for x in (
                c.function, c.layer, c.form, c.num_heads, c.num_kv_heads, c.head_dim, mask, c.dtype,
                c.q_len, c.kv_len, status)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
        lines = ["  ".join(x.ljust(w) for x, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
        return "\n".join(lines + [self.summary()])
