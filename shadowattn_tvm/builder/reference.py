"""`reference/` of a build: seeded inputs and this host's output on them, so deploy needs no compiler.

    reference/inputs.npz     the data inputs of `main` (seeded, `models.make_inputs`), by name
    reference/output.npy     the host build's output on them (with the model's real weights)
    reference/reference.json seed, entry, which inputs are weights (loaded from the model file at
                             deploy, not copied: they are the model's size)
    weights/derived.npz      weights that are in no model file (tables an ONNX import folded at
                             the build's length), when there are any

The host build is the same model with the same pipeline options (NPU phases included, whose
graphs run as host twins on the host's serial NPU lane), so a device run must match it.
"""
from __future__ import annotations

import json

import numpy as np

from .manifest import DERIVED_WEIGHTS as DERIVED, Artifact
from .models import model_inputs

DIRECTORY = "reference"
SEED = 0


def write_derived(out, model) -> list:
    """weights/derived.npz: the weights deploy cannot read from the model file."""
    if not model.derived:
        return []
    (out / DERIVED).parent.mkdir()
    np.savez(out / DERIVED, **model.derived)
    return [Artifact(DERIVED, "weights-derived")]


def write(out, model, executable, seed: int = SEED) -> list:
    from .._compat import relax, tvm
    from ..runtime import lanes  # noqa: F401 - registers the NPU lane functions an NPU build calls

    loaded = model.weights() if model.weights is not None else {}  # once: SmolLM2's are 540 MB
    weights = set(loaded)
    inputs = model_inputs(model, seed, loaded)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    output = vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()
    folder = out / DIRECTORY
    folder.mkdir()
    np.savez(folder / "inputs.npz", **{s.name: x for s, x in zip(model.inputs, inputs) if s.name not in weights})
    np.save(folder / "output.npy", output)
    (folder / "reference.json").write_text(json.dumps({
        "seed": seed, "entry": "main", "weights": sorted(weights),
        "made_by": "the same model and pipeline options compiled for this host (llvm), run on its serial lanes",
    }, indent=1) + "\n")
    return [Artifact(f"{DIRECTORY}/{name}", kind) for name, kind in
            (("inputs.npz", "reference-inputs"), ("output.npy", "reference-output"), ("reference.json", "reference"))]


GENERATE = "generate.json"
GENERATED_TOKENS = 8


def write_generation(out, model, executable, steps: int = GENERATED_TOKENS) -> list:
    """reference/generate.json (the reference prompt's greedy tokens) and prefill_logits.npy (the
    prefill's last-row logits), from this host's run of the build's program."""
    from .._compat import relax, tvm
    from ..runtime import lanes  # noqa: F401 - registers the NPU lane functions an NPU build calls
    from ..runtime.generation import Session

    weights = model.weights()
    names = [s.name for s in model.inputs[3:]]  # prefill_c0(input_ids, kv, last, *weights)
    session = Session(relax.VirtualMachine(executable, tvm.cpu()), tvm.cpu(),
                      [tvm.runtime.tensor(weights[n]) for n in names], model.generation)
    ids = list(model.reference_prompt)
    logits = session.prefill(ids)
    tokens = []
    step = logits
    for _ in range(steps):  # greedy, through EOS too: deploy compares every step
        tokens.append(int(np.argmax(step)))
        step = session.decode(tokens[-1])
    folder = out / DIRECTORY
    folder.mkdir()
    np.save(folder / "prefill_logits.npy", logits)
    (folder / GENERATE).write_text(json.dumps({
        "prompt_ids": ids, "tokens": tokens, "weights": names,
        "made_by": "the same program compiled for this host (llvm): greedy decoding from the reference prompt",
    }, indent=1) + "\n")
    return [Artifact(f"{DIRECTORY}/{GENERATE}", "reference-generation"),
            Artifact(f"{DIRECTORY}/prefill_logits.npy", "reference-output")]


__all__ = ["write", "write_derived", "write_generation", "DERIVED", "DIRECTORY", "GENERATE", "SEED"]
