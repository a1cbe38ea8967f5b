"""A model the project never saw, through every command: tiny random-weight transformers models
(Llama, Qwen2, Qwen3, Mistral with a sliding window) as ONNX exports with a tokenizer.json, and a
Qwen2 GGUF. Random weights: the numbers say only that the path works (slow: ~1-2 min per model)."""
from __future__ import annotations

import json

import pytest

from shadowattn_tvm.builder.manifest import load as load_manifest
from shadowattn_tvm.cli.main import main
from shadowattn_tvm.testing import tiny_models

pytestmark = pytest.mark.slow

TEXT = " ".join(["the cat sat on the mat and the dog ate the hat, then the bird sang."] * 60)
ROWS = ["dense float", "INT8 dense attention (NPU-Full)", "block-sparse 64x64 keep 0.2", "shadowAttn uniform keep 0.2",
        "shadowAttn per-head keep 0.2", "shadowAttn per-head keep 0.1", "shadowAttn group keep 0.2"]  # the rows of SmolLM2's table


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "text.txt").write_text(TEXT)
    return root, str(tiny_models.write_tokenizer_json(root)), str(root / "text.txt")


def _calibrate_eval_compile(model, tmp_path, tokenizer, text, capsys, devices=("host",), evaluate=True):
    tok = ["--tokenizer", tokenizer] if tokenizer else []
    profile = str(tmp_path / "profile.json")
    assert main(["calibrate", model, *tok, "--text", text, "--ctx", "16", "32", "--windows", "2", "-o", profile]) == 0
    data = json.loads(open(profile).read())
    assert len(data["layers"]) == 2 and all(len(layer["ratios"]) == 4 for layer in data["layers"])
    capsys.readouterr()
    if evaluate:
        assert main(["eval", model, *tok, "--profile", profile, "--text", text, "--ctx", "32", "--windows", "2",
                     "--json", str(tmp_path / "acc.json")]) == 0
        rows = json.loads((tmp_path / "acc.json").read_text())["contexts"]["32"]
        assert [r["name"] for r in rows] == ROWS and rows[0]["delta_pct"] == 0
    builds = {}
    for device in devices:
        out = tmp_path / f"build-{device}"
        assert main(["compile", model, "--device", device, "--tokens", "32", "--profile", profile, "-o", str(out),
                     "--quiet"]) == 0
        assert "2/2 attention blocks rewritten" in capsys.readouterr().out
        builds[device] = load_manifest(out)
    return builds


# qwen2 comes as GGUF below; qwen2/qwen3 ONNX exports are checked against torch in test_source.py
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_an_onnx_export_through_calibrate_eval_and_compile(onnx_fixtures, files, family, tmp_path, capsys):
    _, tokenizer, text = files
    devices = ("host", "snapdragon-8gen3") if family == "mistral" else ("host",)
    # eval (seven compiled or hooked rows) runs for llama; mistral's sliding window and the GGUF qwen2
    # go through calibrate and compile (the suite's time budget)
    builds = _calibrate_eval_compile(str(onnx_fixtures[family].path), tmp_path, tokenizer, text, capsys, devices,
                                     evaluate=family == "llama")
    weights = builds["host"].data["model"]["weights"]
    assert weights["format"] == "onnx" and weights["path"] == str(onnx_fixtures[family].path)
    assert weights["derived"] and "weights/derived.npz" in builds["host"].data["files"]  # the folded RoPE tables
    if "snapdragon-8gen3" in builds:  # the NPU lane: scales from the profile, every pilot an NPU launch
        phone = builds["snapdragon-8gen3"]
        assert phone.data["lanes"]["pilot"]["lane"] == "npu" and "plan.json" in phone.data["files"]


def test_a_qwen2_gguf_through_calibrate_eval_and_compile(files, tmp_path, capsys):
    _, _, text = files
    path = tiny_models.write_gguf(tiny_models.hf_model("qwen2"), tmp_path / "tiny-qwen2.gguf")
    builds = _calibrate_eval_compile(str(path), tmp_path, None, text, capsys, evaluate=False)
    weights = builds["host"].data["model"]["weights"]
    assert weights["format"] == "gguf" and not weights["derived"]
    assert weights["tensors"]["layers.0.attn.q_proj.bias"] == ["blk.0.attn_q.bias", False]
