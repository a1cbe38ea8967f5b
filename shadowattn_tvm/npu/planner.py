"""Launch order for the head-wise NPU -> CPU pipeline (the paper's greedy planner, Algorithm 1).

Every launch is a group of heads that shares one NPU graph: first its pilot runs on the NPU
lane, then its top-k + sparse attention on the CPU lane. With one NPU stage and one CPU stage
per launch this is a two-machine flow shop, for which the greedy order of Johnson's rule is
optimal (minimum makespan): launches whose NPU time is below their CPU time go first, by
ascending NPU time (the CPU lane starts early), then the rest by descending CPU time (the
CPU work left after the NPU lane drains is short). Ties keep the given order.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    key: object  # e.g. (layer, group of heads)
    npu_ms: float
    cpu_ms: float


def plan(launches) -> list:
    """Launches in the order the lanes should issue them."""
    indexed = list(enumerate(launches))
    head = sorted((x for x in indexed if x[1].npu_ms < x[1].cpu_ms), key=lambda x: (x[1].npu_ms, x[0]))
    tail = sorted((x for x in indexed if x[1].npu_ms >= x[1].cpu_ms), key=lambda x: (-x[1].cpu_ms, x[0]))
    return [launch for _, launch in head + tail]


def makespan(order) -> float:
    """Finish time of the two-lane pipeline running `order` (no other work on either lane)."""
    npu_done = cpu_done = 0.0
    for launch in order:
        npu_done += launch.npu_ms
        cpu_done = max(cpu_done, npu_done) + launch.cpu_ms
    return cpu_done


def serial_time(launches) -> float:
    """One lane doing everything: the baseline the pipeline is compared with."""
    return sum(l.npu_ms + l.cpu_ms for l in launches)


def best_order_brute_force(launches) -> float:
    """Minimum makespan over all orders (tests only: factorial cost)."""
    return min(makespan(p) for p in itertools.permutations(launches))
