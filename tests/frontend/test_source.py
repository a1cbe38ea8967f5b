"""`frontend.source`: one model interface (GGUF, ONNX, any Relax module), its weight maps and errors."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

import shadowattn_tvm as sat
from shadowattn_tvm.frontend import GGUFSource, ModelError, ModelRunner, RelaxSource, open_model
from shadowattn_tvm.tokenizer import TokenizerError
from shadowattn_tvm.testing import tiny_llama, tiny_models

TOKENS = 24


def test_open_model_names_the_choices(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'gpt5': pass smollm2, a .gguf file or an .onnx file"):
        open_model("gpt5")
    with pytest.raises(ModelError, match="unknown model .*model.bin"):
        open_model(tmp_path / "model.bin")
    with pytest.raises(ModelError, match="does not exist"):
        open_model(tmp_path / "missing.onnx")
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ModelError, match=r"^model file \S+dir\.gguf is a directory: pass the \.gguf file itself"):
        open_model(tmp_path / "dir.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        open_model(tmp_path / "empty.gguf")
    with pytest.raises(ModelError, match="'default' is the attention block"):
        open_model("default")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk" * 50)
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        open_model(tmp_path / "junk.onnx").export(8)


def test_a_tokenizer_directory_is_named_with_the_file_to_pass(tmp_path):
    from shadowattn_tvm.tokenizer import from_file

    with pytest.raises(TokenizerError, match=r"^tokenizer file \S+ is a directory: pass the tokenizer\.json or \.gguf "
                                             r"file inside it$"):
        from_file(tmp_path)
    inside = tiny_models.write_tokenizer_json(tmp_path)
    with pytest.raises(TokenizerError, match=rf"^tokenizer file \S+ is a directory: pass {re.escape(str(inside))}$"):
        from_file(inside.parent)
    with pytest.raises(TokenizerError, match="does not exist: pass a tokenizer.json or a .gguf file"):
        from_file(tmp_path / "missing.json")


def test_gguf_weights_reload_from_the_map_and_the_file_is_checked(tmp_path):
    path = tiny_llama.tiny_gguf_path(tmp_path)
    source = GGUFSource(path)
    exported = source.export(TOKENS)
    wmap = exported.weight_map
    assert wmap.format == "gguf" and set(wmap.tensors) == set(exported.weight_names)
    reloaded = type(wmap).from_json(wmap.to_json()).load()  # what deploy does, from the manifest's JSON
    original = exported.weights()
    assert all(np.array_equal(reloaded[n], original[n]) for n in exported.weight_names)
    with pytest.raises(ValueError, match="context length"):
        source.export(source.max_len + 1)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_onnx_exports_reproduce_torch_and_map_their_weights(onnx_fixtures, family, tmp_path):
    fx = onnx_fixtures[family]
    source = open_model(fx.path, tokenizer=tiny_models.write_tokenizer_json(tmp_path))
    runner = ModelRunner(source)
    ids = fx.inputs["input_ids"][0]
    report = sat.AttentionReport()
    out = runner.compile(len(ids), sat.pipeline(keep=1.0, report=report))(ids)
    np.testing.assert_allclose(out, fx.expected[0], rtol=1e-4, atol=1e-4)
    assert report.summary() == "2/2 attention blocks rewritten"
    exported = source.export(len(ids))
    # weights come from the file by name, tables folded at this length are derived (kept with a build)
    assert set(exported.weight_map.tensors) | set(exported.derived) == set(exported.weight_names)
    assert set(exported.weight_map.derived) == set(exported.derived)
    reloaded = exported.weight_map.load(derived=exported.derived)
    assert all(np.array_equal(reloaded[n], exported.weights()[n]) for n in exported.weight_names)
    assert source.tokenizer.bos_id == 1 and source.tokenizer.encode("the") == [tiny_llama.TOKENS.index("the")]


def test_an_onnx_model_without_a_tokenizer_says_how_to_give_one(onnx_fixtures):
    source = open_model(onnx_fixtures["llama"].path)
    with pytest.raises(TokenizerError, match="--tokenizer"):
        source.tokenizer  # noqa: B018


def test_auxiliary_inputs_are_filled_and_caches_refused():
    import onnx
    from onnx import TensorProto, helper

    from shadowattn_tvm.frontend.onnx_inputs import prepare_causal_lm

    def model(*extra):
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])]
        inputs += [helper.make_tensor_value_info(n, TensorProto.INT64, [1, "seq"]) for n in extra]
        nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
                 helper.make_node("Unsqueeze", ["f", "axes"], ["logits"])]
        for n in extra:
            nodes.append(helper.make_node("Identity", [n], [f"{n}_out"]))
        graph = helper.make_graph(nodes, "m", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                     [1, "seq", 1])],
                                  [onnx.numpy_helper.from_array(np.array([2], np.int64), "axes")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    prepared = prepare_causal_lm(model("attention_mask", "position_ids"), 5)
    assert [i.name for i in prepared.graph.input if i.name not in {t.name for t in prepared.graph.initializer}] == \
        ["input_ids"]
    fills = {t.name: onnx.numpy_helper.to_array(t) for t in prepared.graph.initializer}
    assert (fills["attention_mask"] == 1).all() and list(fills["position_ids"][0]) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="KV cache .*past_key_values.0.key.*use_cache=False"):
        prepare_causal_lm(model("past_key_values.0.key"), 5)
    with pytest.raises(ValueError, match="'pixel_values' is neither input_ids nor one we can fill"):
        prepare_causal_lm(model("pixel_values"), 5)


def test_any_relax_module_with_its_weights():
    n = tvm.tirx.Var("n", "int64")
    bb = relax.BlockBuilder()
    ids = relax.Var("input_ids", relax.TensorType((1, n), "int32"))
    table = relax.Var("table", relax.TensorType((16, 8), "float32"))
    with bb.function("main", [ids, table]):
        rows = bb.emit(relax.op.take(table, relax.op.reshape(ids, [n]), axis=0))
        bb.emit_func_output(relax.op.expand_dims(rows, 0))
    weights = {"table": np.random.default_rng(0).standard_normal((16, 8)).astype("float32")}
    source = RelaxSource(bb.get(), weights, name="lookup")
    forward = ModelRunner(source).compile(6, sat.lowering())
    np.testing.assert_allclose(forward([1, 2, 3, 4, 5, 6]), weights["table"][1:7])
    assert source.export(6).weight_map is None  # no file: a build keeps these weights itself
    with pytest.raises(ModelError, match="main takes 2 inputs but 0 weights"):
        RelaxSource(bb.get(), {})
