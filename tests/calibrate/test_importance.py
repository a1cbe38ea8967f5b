import numpy as np
import pytest

from shadowattn_tvm.calibrate.importance import allocate_ratios, head_shares


def test_shares_clamp_negatives_and_outliers():
    head = np.array([[1.0, -2.0, 3.0], [0.5, 100.0, 0.1]])
    layer = np.array([2.0, 1.0])
    shares = head_shares(head, layer, cap_percentile=95)
    assert (shares > 0).all()  # a head whose zeroing helps still gets a small positive share
    assert shares[1, 1] < 100  # the outlier is capped
    assert shares[0, 2] > shares[0, 0] > shares[0, 1]


@pytest.mark.parametrize("keep", [0.05, 0.2, 0.5, 0.9])
def test_ratios_mean_keep_and_stay_in_range(keep):
    shares = np.random.default_rng(0).exponential(size=(30, 9)) ** 3  # skewed: forces capping at 1
    ratios = allocate_ratios(shares, keep, temper=1.0, floor=0.02)
    assert ratios.mean() == pytest.approx(keep)
    assert ratios.max() <= 1.0 + 1e-12 and ratios.min() >= min(0.02, keep) - 1e-12
    order = np.argsort(shares.ravel())
    assert (np.diff(ratios.ravel()[order]) >= -1e-12).all()  # monotone in importance


def test_temper_flattens_ratios_and_keeps_their_order():
    shares = 10.0 ** -np.random.default_rng(1).uniform(1, 8, size=(30, 9))  # SmolLM2-like spread
    paper = allocate_ratios(shares, 0.2, temper=1.0, floor=0.02)
    tempered = allocate_ratios(shares, 0.2)
    assert tempered.mean() == pytest.approx(0.2) and tempered.min() >= 0.1 - 1e-12  # default floor keep / 2
    assert (paper <= 0.02 + 1e-9).sum() > (tempered <= 0.1 + 1e-9).sum()
    assert tempered.max() / tempered.min() < paper.max() / paper.min()
    order = np.argsort(shares.ravel())
    assert (np.diff(tempered.ravel()[order]) >= -1e-12).all()


def test_uniform_shares_give_uniform_ratios():
    np.testing.assert_allclose(allocate_ratios(np.ones((4, 3)), 0.3), 0.3)


def test_bad_keep():
    with pytest.raises(ValueError, match="outside"):
        allocate_ratios(np.ones(3), 1.5)
    with pytest.raises(ValueError, match="temper"):
        allocate_ratios(np.ones(3), 0.2, temper=0)
