import json

import pytest

from shadowattn_tvm.calibrate import LayerProfile, ProfileError, SparsityProfile


def test_uniform_profile_covers_any_layer():
    profile = SparsityProfile.uniform(0.3)
    layer = profile.layer(7, num_heads=5, num_kv_heads=1)
    assert layer.ratios == (0.3,) * 5 and not layer.has_scales


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_keep_outside_unit_interval(keep):
    with pytest.raises(ProfileError, match=r"outside \(0, 1\]"):
        SparsityProfile.uniform(keep)


@pytest.mark.parametrize("scales", [(1.0, 0.0), (1.0, -2.0), (float("nan"), 1.0), (float("inf"), 1.0)])
def test_bad_static_scales(scales):
    with pytest.raises(ProfileError, match="non-finite or non-positive"):
        LayerProfile(ratios=(0.2, 0.2), q_scales=scales, k_scales=(1.0,))


def test_scales_come_in_pairs():
    with pytest.raises(ProfileError, match="both q_scales and k_scales"):
        LayerProfile(ratios=(0.2,), q_scales=(1.0,))


def test_head_count_mismatch_names_the_layer():
    profile = SparsityProfile(keep=0.2, layers=(LayerProfile((0.2,) * 4),))
    with pytest.raises(ProfileError, match="layer 0 has 6 query heads but the profile gives 4"):
        profile.layer(0, num_heads=6, num_kv_heads=2)
    with pytest.raises(ProfileError, match="covers 1 layers"):
        profile.layer(1, num_heads=4, num_kv_heads=2)


def test_scale_count_mismatch():
    profile = SparsityProfile(keep=0.2, layers=(LayerProfile((0.2,) * 4, (1.0,) * 4, (1.0,) * 3),))
    with pytest.raises(ProfileError, match="2 KV heads"):
        profile.layer(0, num_heads=4, num_kv_heads=2)


def test_json_round_trip(tmp_path):
    profile = SparsityProfile(keep=0.2, model="abc", layers=(
        LayerProfile((0.1, 0.3), (0.5, 0.25), (0.125,)), LayerProfile((0.2, 0.2))))
    path = tmp_path / "p.json"
    profile.save(path)
    assert SparsityProfile.load(path) == profile


def test_malformed_files(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        SparsityProfile.load(path)
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(ProfileError, match="version"):
        SparsityProfile.load(path)
    path.write_text(json.dumps({"version": 1, "keep": 0.2, "layers": [{"nope": 1}]}))
    with pytest.raises(ProfileError, match="malformed"):
        SparsityProfile.load(path)
    for layers, what in (([None], r"layers\[0\] must be an object with a 'ratios' list \(got null\)"),
                         (["abc"], r"layers\[0\] must be an object"), ("abc", "'layers' must be a list")):
        path.write_text(json.dumps({"version": 1, "keep": 0.2, "layers": layers}))
        with pytest.raises(ProfileError, match=f"malformed profile: {what}.*shadowattn calibrate"):
            SparsityProfile.load(path)
    with pytest.raises(ProfileError, match="is a directory: pass the profile JSON file"):
        SparsityProfile.load(tmp_path)
