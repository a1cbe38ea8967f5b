"""`BuildOptions`: everything besides the device and model that decides what a build contains."""
from __future__ import annotations

from dataclasses import dataclass

from .._compat import tvm
from ..calibrate.profile import SparsityProfile, check_keep
from ..passes import AttentionReport, pipeline


@dataclass(frozen=True)
class BuildOptions:
    keep: float | None = 0.2  # None: take the ratio from `profile`
    k_min: int = 16
    profile: SparsityProfile | None = None

    def __post_init__(self):
        if self.keep is None and self.profile is None:
            raise ValueError("give keep=<ratio in (0, 1]> or a calibration profile")
        if self.keep is not None:
            check_keep(self.keep)
        if self.k_min < 1:
            raise ValueError(f"k_min must be >= 1, got {self.k_min}")

    def to_json(self) -> dict:
        return {"keep": self.keep, "k_min": self.k_min,
                "profile": None if self.profile is None else self.profile.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> "BuildOptions":
        profile = data.get("profile")
        return cls(keep=data.get("keep"), k_min=int(data.get("k_min", 16)),
                   profile=None if profile is None else SparsityProfile.from_json(profile))

    def relax_pipeline(self, report: AttentionReport | None = None):
        keep = None if self.profile is not None and self.profile.layers else self.keep
        return pipeline(keep=keep, profile=self.profile, report=report, k_min=self.k_min)


def compile_model(mod, target, options: BuildOptions, report: AttentionReport | None = None):
    """``tvm.compile`` with the shadowAttn pipeline: the one place a build's executable is made."""
    return tvm.compile(mod, target=target, relax_pipeline=options.relax_pipeline(report))
