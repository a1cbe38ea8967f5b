"""`weights.WeightMap`: what deploy reads, from the model file it names, checked by sha256."""
import numpy as np
import pytest

from shadowattn_tvm.frontend import GGUFSource
from shadowattn_tvm.testing import tiny_llama
from shadowattn_tvm.weights import TensorRef, WeightMap, WeightsError


@pytest.fixture
def wmap(tmp_path):
    return GGUFSource(tiny_llama.tiny_gguf_path(tmp_path)).weight_map


def test_transposed_refs_and_derived_inputs(wmap):
    arrays = wmap.load()
    assert arrays["layers.0.attn.q_proj.weight"].shape == (64, 64) and arrays["embed"].shape == (len(tiny_llama.TOKENS), 64)
    extra = WeightMap(wmap.format, wmap.path, wmap.sha256, {"e": TensorRef("token_embd.weight", True)}, ("rope",))
    out = extra.load(derived={"rope": np.ones(3)})
    assert out["e"].shape == (64, len(tiny_llama.TOKENS)) and out["rope"].shape == (3,)
    with pytest.raises(WeightsError, match=r"inputs \['rope'\] are not in the model file"):
        extra.load()


def test_a_changed_or_moved_file_is_refused_with_the_fix(wmap, tmp_path):
    moved = tmp_path / "moved.gguf"
    data = bytearray(open(wmap.path, "rb").read())
    moved.write_bytes(data)
    assert set(wmap.load(moved)) == set(wmap.tensors)  # the same bytes elsewhere: fine
    data[-1] ^= 0xFF
    moved.write_bytes(data)
    with pytest.raises(WeightsError, match="not the model file this was built from"):
        wmap.load(moved)
    with pytest.raises(WeightsError, match="is gone.*deploy --model FILE"):
        wmap.load(tmp_path / "nowhere.gguf")
    with pytest.raises(WeightsError, match="no tensor 'blk.9.x'"):
        WeightMap(wmap.format, wmap.path, wmap.sha256, {"x": TensorRef("blk.9.x")}).load()
    with pytest.raises(WeightsError, match="unknown weight file format 'bin'"):
        WeightMap("bin", wmap.path, wmap.sha256)
