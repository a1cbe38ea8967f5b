import pytest

from shadowattn_tvm.demo import run_demo


@pytest.mark.slow
def test_default_demo_meets_the_paper_numbers():
    """Qwen2-0.5B-shaped block at 1024 tokens: recall of the INT8 pilot >= 99 % (paper Table 4)."""
    result = run_demo(tokens=1024, keep=0.2, repeat=1)
    assert result.blocks_found == result.blocks_rewritten == 1
    assert result.recall >= 0.99
    assert result.max_err_vs_reference < 1e-4
    assert result.rel_err_vs_dense < 0.05


def test_small_demo_matches_reference():
    result = run_demo(tokens=64, keep=0.5, k_min=4, repeat=1)
    assert result.max_err_vs_reference < 1e-4 and 0 < result.rel_err_vs_dense < 1
