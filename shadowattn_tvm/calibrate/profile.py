"""`SparsityProfile`: per-layer, per-head keep ratios and static int8 scales for the pilot.

Made offline by calibration (or uniformly from one keep ratio) and passed into the passes; the
passes never hold literal ratio lists. Serialised as versioned JSON.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

PROFILE_VERSION = 1
#: the SmolLM2-135M-Instruct profile the package ships (calibrated on the Python docs)
SHIPPED_PROFILE = Path(__file__).resolve().parent.parent / "data" / "smollm2_profile.json"


class ProfileError(ValueError):
    """A profile that is malformed or does not fit the model it is applied to."""


def check_keep(keep: float, what: str = "keep") -> float:
    # bool is an int subclass: keep=True would silently mean "keep everything"
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real):
        raise ProfileError(f"{what}={keep!r} is not a number: pass the fraction of keys to keep, e.g. 0.2")
    keep = float(keep)
    if not (0.0 < keep <= 1.0) or not math.isfinite(keep):
        raise ProfileError(f"{what}={keep!r} is outside (0, 1]: pass the fraction of keys to keep, e.g. 0.2")
    return keep


def check_k_min(k_min: int) -> int:
    """The minimum keys kept per row: a whole number >= 1 (2.5 or True would be cut silently)."""
    if isinstance(k_min, bool) or not isinstance(k_min, numbers.Integral) or k_min < 1:
        raise ProfileError(f"k_min={k_min!r} is not a whole number >= 1: pass the fewest keys a row keeps, e.g. 16")
    return int(k_min)


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
    q_scales: tuple | None = None  # per query head: calibrated mean of absmax/127
    k_scales: tuple | None = None  # per KV head
    v_scales: tuple | None = None  # per KV head (INT8 dense baseline only)
    q_scale_std: tuple | None = None  # spread of the per-window scales (NPU bucketing)
    k_scale_std: tuple | None = None
    importance: tuple | None = None  # calibrated per-head share, to re-target another keep ratio

    def __post_init__(self):
        object.__setattr__(self, "ratios", tuple(check_keep(r, "head keep ratio") for r in self.ratios))
        if (self.q_scales is None) != (self.k_scales is None):
            raise ProfileError("a layer needs both q_scales and k_scales, or neither")
        if self.q_scales is not None:
            object.__setattr__(self, "q_scales", _check_scales(self.q_scales, "q_scales"))
            object.__setattr__(self, "k_scales", _check_scales(self.k_scales, "k_scales"))
        if self.v_scales is not None:
            object.__setattr__(self, "v_scales", _check_scales(self.v_scales, "v_scales"))
        for name in ("q_scale_std", "k_scale_std", "importance"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(x) for x in value)
                if not all(math.isfinite(x) and x >= 0 for x in value):
                    raise ProfileError(f"{name} must be finite and >= 0, got {value[:4]}")
                object.__setattr__(self, name, value)

    @property
    def has_scales(self) -> bool:
        return self.q_scales is not None


_LAYER_FIELDS = ("ratios", "q_scales", "k_scales", "v_scales", "q_scale_std", "k_scale_std", "importance")


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

    def retarget(self, keep: float, uniform: bool = False) -> "SparsityProfile":
        """The same calibration at another global keep ratio (or uniform ratios, same scales)."""
        from dataclasses import replace

        from .importance import allocate_ratios

        keep = check_keep(keep)
        if not self.layers:
            return SparsityProfile.uniform(keep)
        if uniform:
            layers = [replace(l, ratios=(keep,) * len(l.ratios)) for l in self.layers]
        else:
            if any(l.importance is None for l in self.layers):
                raise ProfileError("this profile has no per-head importance: re-run calibration to retarget it")
            ratios = allocate_ratios([l.importance for l in self.layers], keep)
            layers = [replace(l, ratios=tuple(r)) for l, r in zip(self.layers, ratios)]
        return SparsityProfile(keep=keep, layers=tuple(layers), model=self.model)

    def check_model(self, fingerprint: str, warn=None) -> bool:
        """Whether the profile was calibrated on this model file (True when either side is unknown).

        A profile made on another file is still applied: the same model exported to another format
        (GGUF vs ONNX) has another fingerprint, and a profile for a different model is refused by
        its layer and head counts when the passes apply it. `warn(line)` is told about a mismatch.
        """
        same = not (self.model and fingerprint and self.model != fingerprint)
        if not same and warn is not None:
            warn(f"warning: the profile was calibrated on model file {self.model}, not this one ({fingerprint}); "
                 "applying it (its layer and head counts are checked against the model)")
        return same

    def check_layer_count(self, count: int) -> None:
        """A calibrated profile must cover exactly the model's `count` numbered attention layers."""
        if self.layers and len(self.layers) != count:
            raise ProfileError(
                f"the profile covers {len(self.layers)} attention layers but the model has {count} (the "
                "blocks detection rewrote; blocks left dense are not numbered): the profile was made for "
                "another model; calibrate one on this model"
            )

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
            "layers": [{name: (list(getattr(l, name)) if getattr(l, name) is not None else None)
                        for name in _LAYER_FIELDS} for l in self.layers],
        }

    @classmethod
    def from_json(cls, data: dict) -> "SparsityProfile":
        if not isinstance(data, dict) or data.get("version") != PROFILE_VERSION:
            raise ProfileError(
                f"not a shadowattn profile of version {PROFILE_VERSION} (got "
                f"{data.get('version') if isinstance(data, dict) else type(data).__name__}): "
                "re-create it with `shadowattn calibrate`"
            )
        fix = "re-create it with `shadowattn calibrate`"
        if not isinstance(data.get("layers"), list):
            raise ProfileError(f"malformed profile: 'layers' must be a list of layer objects: {fix}")
        for i, l in enumerate(data["layers"]):
            if not isinstance(l, dict) or not isinstance(l.get("ratios"), list):
                raise ProfileError(f"malformed profile: layers[{i}] must be an object with a 'ratios' list (got "
                                   f"{json.dumps(l)[:40]}): {fix}")
        try:
            layers = tuple(LayerProfile(tuple(l["ratios"]), **{k: l.get(k) for k in _LAYER_FIELDS[1:]})
                           for l in data["layers"])
            return cls(keep=data["keep"], layers=layers, model=data.get("model", ""))
        except (KeyError, TypeError) as err:
            raise ProfileError(f"malformed profile: missing or wrong field {err}: {fix}") from err

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path) -> "SparsityProfile":
        if Path(path).is_dir():
            raise ProfileError(f"profile {path} is a directory: pass the profile JSON file")
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ProfileError(f"no profile file {path}: make one with `shadowattn calibrate MODEL -o {path}`") from None
        except json.JSONDecodeError as err:
            raise ProfileError(f"{path} is not valid JSON ({err}): re-create it with `shadowattn calibrate`") from err
        return cls.from_json(data)
