"""shadowattn-tvm: shadowAttn dynamic sparse attention (Yin et al., arXiv 2508.16703) on Apache TVM.

    import tvm, shadowattn_tvm as sat
    ex = tvm.compile(mod, target="llvm", relax_pipeline=sat.pipeline(keep=0.2))

The names below are imported on first use, so ``import shadowattn_tvm.runtime.deploy`` (the
deploy path) loads no compiler module: no passes, no kernels, no frontend.
"""
import importlib

from . import settings as _settings

_settings.default_threads()

__version__ = "0.1.0"

_LAZY = {
    "targets": ".targets", "frontend": ".frontend",
    "AttentionBlock": ".block", "CausalMode": ".block", "KVMap": ".block",
    "ScaleMode": ".block",
    "LayerProfile": ".calibrate", "ProfileError": ".calibrate", "SparsityProfile": ".calibrate",
    "NPUOptions": ".npu.options",
    "AttentionReport": ".passes", "DetectAttention": ".passes",
    "SplitSparseAttention": ".passes", "UnsupportedAttentionError": ".passes",
    "lowering": ".passes", "pipeline": ".passes",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name in ("targets", "frontend") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = sorted(_LAZY)
