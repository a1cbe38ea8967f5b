import numpy as np
import pytest

from shadowattn_tvm.npu.planner import Launch, best_order_brute_force, makespan, plan, serial_time


@pytest.mark.parametrize("seed", range(25))
def test_greedy_order_is_optimal_on_small_head_counts(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    launches = [Launch(i, float(rng.uniform(0.1, 5)), float(rng.uniform(0.1, 5))) for i in range(n)]
    order = plan(launches)
    assert sorted(l.key for l in order) == list(range(n))
    assert makespan(order) == pytest.approx(best_order_brute_force(launches))
    assert makespan(order) <= serial_time(launches)


def test_npu_light_launches_go_first():
    launches = [Launch("a", 5, 1), Launch("b", 1, 5), Launch("c", 2, 3)]
    assert [l.key for l in plan(launches)] == ["b", "c", "a"]

def test_makespan_arithmetic():
    order = [Launch("b", 1, 5), Launch("c", 2, 3), Launch("a", 5, 1)]
    # NPU finishes at 1, 3, 8; CPU runs [1,6], [6,9], [9,10]
    assert makespan(order) == 10
