"""`SparsityProfile`: per-layer, per-head keep ratios and static int8 scales for the pilot.

Made offline by calibration (or uniformly from one keep ratio) and passed into the passes; the
passes never hold literal ratio lists. Serialised as versioned JSON.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

PROFILE_VERSION = 1


class ProfileError(ValueError):
    """A profile that is malformed or does not fit the model it is applied to."""


def check_keep(keep: float, what: str = "keep") -> float:
    keep = float(keep)
    if not (0.0 < keep <= 1.0) or not math.isfinite(keep):
        raise ProfileError(f"{what}={keep!r} is outside (0, 1]: pass the fraction of keys to keep, e.g. 0.2")
    return keep


def _check_scales(scales, what: str) -> tuple:
    scales = tuple(float(s) for s in scales)
    bad = [s for s in scales if not (math.isfinite(s) and s > 0.0)]
    if bad:
        raise ProfileError(
            f"{what} has non-finite or non-positive int8 scales {bad[:4]}: a static scale is "
            "absmax/127 of the head's activations and must be > 0; re-run calibration"
        )
    return scales


@dataclass(frozen=True)
class LayerProfile:
    """One attention layer: keep ratio per query head, optional static scales per head."""

    ratios: tuple
    q_scales: tuple | None = None  # per query head
    k_scales: tuple | None = None  # per KV head

    def __post_init__(self):
        object.__setattr__(self, "ratios", tuple(check_keep(r, "head keep ratio") for r in self.ratios))
        if (self.q_scales is None) != (self.k_scales is None):
            raise ProfileError("a layer needs both q_scales and k_scales, or neither")
        if self.q_scales is not None:
            object.__setattr__(self, "q_scales", _check_scales(self.q_scales, "q_scales"))
            object.__setattr__(self, "k_scales", _check_scales(self.k_scales, "k_scales"))

    @property
    def has_scales(self) -> bool:
        return self.q_scales is not None


@dataclass(frozen=True)
class SparsityProfile:
    """Everything the split pass needs per layer; `keep` is the global keep ratio it targets."""

    keep: float
    layers: tuple = field(default_factory=tuple)
    model: str = ""  # fingerprint of the model it was made for ("" = any)

    def __post_init__(self):
        object.__setattr__(self, "keep", check_keep(self.keep))
        object.__setattr__(self, "layers", tuple(self.layers))

    @classmethod
    def uniform(cls, keep: float) -> "SparsityProfile":
        """The same ratio for every head of every layer, dynamic scales."""
        return cls(keep=keep)

    def layer(self, index: int, num_heads: int, num_kv_heads: int) -> LayerProfile:
        """The profile of attention layer `index`, checked against the layer's head counts."""
        if not self.layers:
            return LayerProfile(ratios=(self.keep,) * num_heads)
        if index >= len(self.layers):
            raise ProfileError(
                f"the model has attention layer {index} but the profile covers {len(self.layers)} "
                "layers: calibrate the profile on this model"
            )
        layer = self.layers[index]
        if len(layer.ratios) != num_heads:
            raise ProfileError(
                f"layer {index} has {num_heads} query heads but the profile gives "
                f"{len(layer.ratios)} ratios: the profile was made for another model"
            )
        if layer.has_scales and (len(layer.q_scales) != num_heads or len(layer.k_scales) != num_kv_heads):
            raise ProfileError(
                f"layer {index} has {num_heads} query / {num_kv_heads} KV heads but the profile gives "
                f"{len(layer.q_scales)} / {len(layer.k_scales)} scales: the profile was made for another model"
            )
        return layer

    def to_json(self) -> dict:
        return {
            "version": PROFILE_VERSION,
            "keep": self.keep,
            "model": self.model,
            "layers": [
                {"ratios": list(l.ratios), "q_scales": l.q_scales and list(l.q_scales),
                 "k_scales": l.k_scales and list(l.k_scales)}
                for l in self.layers
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> "SparsityProfile":
        if not isinstance(data, dict) or data.get("version") != PROFILE_VERSION:
            raise ProfileError(
                f"not a shadowattn profile of version {PROFILE_VERSION} (got "
                f"{data.get('version') if isinstance(data, dict) else type(data).__name__}): "
                "re-create it with `shadowattn calibrate`"
            )
        try:
            layers = tuple(
                LayerProfile(tuple(l["ratios"]), l.get("q_scales"), l.get("k_scales")) for l in data["layers"]
            )
            return cls(keep=data["keep"], layers=layers, model=data.get("model", ""))
        except (KeyError, TypeError) as err:
            raise ProfileError(f"malformed profile: missing or wrong field {err}") from err

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path) -> "SparsityProfile":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ProfileError(f"{path} is not valid JSON ({err}): re-create it with `shadowattn calibrate`") from err
        return cls.from_json(data)
