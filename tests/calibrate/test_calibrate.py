"""calibrate() and the accuracy table end to end on the tiny GGUF Llama."""
import numpy as np
import pytest

from shadowattn_tvm.calibrate import ProfileError, SparsityProfile
from shadowattn_tvm.calibrate.profile import LayerProfile
from shadowattn_tvm.calibrate.calibrate import calibrate
from shadowattn_tvm.evaluation.accuracy import accuracy_table, format_table
from shadowattn_tvm.frontend import GGUFSource, ModelRunner
from shadowattn_tvm.testing import tiny_llama

pytestmark = pytest.mark.slow  # compiles the tiny model seven times

TEXT = " ".join(["the cat sat on the mat and the dog ate the hat"] * 40)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return ModelRunner(GGUFSource(tiny_llama.tiny_gguf_path(tmp_path_factory.mktemp("gguf"))))


@pytest.fixture(scope="module")
def profile(runner):
    return calibrate(runner, TEXT, keep=0.25, ctx=(16, 32), num_windows=2, progress=False)


def test_profile_shape_scales_and_fingerprint(runner, profile):
    assert len(profile.layers) == 2 and profile.model == runner.fingerprint
    ratios = np.array([l.ratios for l in profile.layers])
    assert ratios.shape == (2, 4) and ratios.mean() == pytest.approx(0.25)
    layer = profile.layers[0]
    assert len(layer.q_scales) == 4 and len(layer.k_scales) == len(layer.v_scales) == 2
    assert all(s > 0 for s in layer.q_scales) and all(s >= 0 for s in layer.q_scale_std)
    assert profile.retarget(0.1).layers[1].ratios != profile.layers[1].ratios


def test_a_profile_of_another_model_file_is_applied_with_a_warning(profile, runner):
    warnings = []
    assert profile.check_model(runner.fingerprint, warnings.append) and not warnings
    assert not profile.check_model("0123456789abcdef", warnings.append)
    assert len(warnings) == 1 and "calibrated on model file" in warnings[0] and "0123456789abcdef" in warnings[0]


def test_importances_of_several_lengths_are_averaged(runner, profile):
    shares = np.array([l.importance for l in profile.layers])
    assert shares.sum() == pytest.approx(1.0)  # each length's shares sum to 1, then the mean
    single = calibrate(runner, TEXT, keep=0.25, ctx=32, num_windows=2, progress=False)
    assert not np.allclose(np.array([l.importance for l in single.layers]), shares)
    # scale statistics pool the windows of both lengths
    assert single.layers[0].q_scales != profile.layers[0].q_scales


def test_accuracy_table_rows(runner, profile):
    rows = accuracy_table(runner, TEXT, profile, ctx=32, num_windows=2, keep=0.5, k_min=2, progress=False)
    names = [r.name for r in rows]
    assert names[0] == "dense float" and len(rows) == 7
    dense = rows[0]
    assert dense.delta_pct == 0 and dense.kl == pytest.approx(0, abs=1e-9) and dense.top1 == 1
    assert all(np.isfinite(r.perplexity) and r.kl >= -1e-9 for r in rows)
    assert all(r.recall is not None for r in rows if r.name.startswith("shadowAttn"))
    assert "INT8 dense attention (NPU-Full)" in format_table(rows, 32, 2, "tiny")


def test_uniform_profile_cannot_retarget_per_head():
    with pytest.raises(ProfileError, match="importance"):
        from shadowattn_tvm.calibrate import LayerProfile

        SparsityProfile(keep=0.2, layers=(LayerProfile((0.2,)),)).retarget(0.1)


def _tiny_lm(vocab: int, seq: int, reshaped_weights: bool):
    """main(input_ids [1, seq], emb, out) -> logits: one 2-head attention block, its softmax 4-D between
    3-D batched matmuls (BLOOM's form) when `reshaped_weights`."""
    from tvm import relax

    ids = relax.Var("input_ids", relax.TensorType((1, seq), "int64"))
    emb = relax.Var("emb", relax.TensorType((vocab, 8), "float32"))
    out = relax.Var("out", relax.TensorType((8, vocab), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [ids, emb, out]):
        with bb.dataflow():
            x = bb.emit(relax.op.take(emb, relax.op.reshape(ids, (seq,)), axis=0))
            h = bb.emit(relax.op.permute_dims(relax.op.reshape(x, (seq, 2, 4)), [1, 0, 2]))  # [2, seq, 4]
            s = bb.emit(relax.op.matmul(h, relax.op.permute_dims(h, [0, 2, 1])))
            if reshaped_weights:
                p = bb.emit(relax.op.nn.softmax(relax.op.reshape(s, (1, 2, seq, seq)), axis=-1))
                p = bb.emit(relax.op.reshape(p, (2, seq, seq)))
            else:
                p = bb.emit(relax.op.nn.softmax(s, axis=-1))
            o = bb.emit(relax.op.reshape(relax.op.permute_dims(relax.op.matmul(p, h), [1, 0, 2]), (seq, 8)))
            logits = bb.emit_output(relax.op.reshape(relax.op.matmul(o, out), (1, seq, vocab)))
        bb.emit_func_output(logits)
    rng = np.random.default_rng(0)
    return bb.get(), {"emb": rng.standard_normal((vocab, 8)).astype("float32"),
                      "out": rng.standard_normal((8, vocab)).astype("float32")}


def test_a_model_without_rewritable_attention_names_why(tmp_path):
    from shadowattn_tvm.frontend import RelaxSource
    from shadowattn_tvm.testing import tiny_models

    mod, params = _tiny_lm(len(tiny_llama.TOKENS), 16, reshaped_weights=True)
    runner = ModelRunner(RelaxSource(mod, params, tokenizer=tiny_models.write_tokenizer_json(tmp_path)))
    with pytest.raises(ValueError, match="nothing to calibrate: every attention candidate \\(1\\) stays dense: "
                                         "the softmax weights are reshaped before the P·V matmul"):
        calibrate(runner, TEXT, ctx=(16,), progress=False)


def test_token_ids_past_the_models_vocabulary_are_refused(tmp_path):
    from shadowattn_tvm.frontend import RelaxSource
    from shadowattn_tvm.passes import lowering
    from shadowattn_tvm.testing import tiny_models
    from shadowattn_tvm.tokenizer import TokenizerError

    mod, params = _tiny_lm(40, 16, reshaped_weights=False)  # the tokenizer has 263 tokens
    runner = ModelRunner(RelaxSource(mod, params, tokenizer=tiny_models.write_tokenizer_json(tmp_path)))
    with pytest.raises(TokenizerError, match="token id 2[0-9]{2} is outside the model's vocabulary of 40 tokens"):
        calibrate(runner, TEXT, ctx=(16,), progress=False)
    forward = runner.compile(16, lowering())
    assert forward(np.arange(16) + 24).shape == (16, 40)  # ids inside the table run
    with pytest.raises(TokenizerError, match="token id -1 is outside"):
        forward(np.arange(16) - 1)


def test_the_accuracy_table_needs_a_calibrated_profile(runner):
    with pytest.raises(ProfileError, match="no calibrated q/k/v scales, which the INT8 row needs"):
        accuracy_table(runner, TEXT, SparsityProfile(keep=0.2), ctx=16, num_windows=1, progress=False)
    with pytest.raises(ProfileError, match="the profile covers 1 attention layers but the model has 2"):
        accuracy_table(runner, TEXT, SparsityProfile(keep=0.2, layers=[LayerProfile((0.2,) * 4)]), ctx=16,
                       num_windows=1, progress=False)
