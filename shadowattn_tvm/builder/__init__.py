"""Compile a model for a device into a build directory (what `shadowattn compile` does).

    from shadowattn_tvm.builder import compile_to_dir
    result = compile_to_dir("snapdragon-8gen3", "build/", tokens=1024, keep=0.2)

`build` runs the artifact writers (`artifacts`) into a staging directory (`directory`) and writes
``manifest.json`` (`manifest`). Names are imported on first use: `manifest` (what deploy reads)
imports no compiler module.
"""
import importlib

_LAZY = {
    "compile_to_dir": ".build", "BuildResult": ".build",
    "BuildOptions": ".options", "compile_model": ".options",
    "BuildDirError": ".directory",
    "Manifest": ".manifest", "ManifestError": ".manifest", "load_manifest": ".manifest",
    "ArtifactWriter": ".artifacts", "DEFAULT_WRITERS": ".artifacts",
    "MODELS": ".models", "DEFAULT_TOKENS": ".models", "get_model": ".models", "make_inputs": ".models",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = getattr(module, "load" if name == "load_manifest" else name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
