"""Perplexity windows and next-token comparison metrics (KL to dense, top-1 agreement), and the
progress bar of the runs that measure them."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool, desc: str):
    """`step()` advances a tqdm bar (a no-op when not `enabled`); the bar is closed on the way out, an
    error's included, so the error's message starts on a line of its own."""
    if not enabled:
        yield lambda: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="run") as bar:
        yield lambda: bar.update(1)


def windows(ids, ctx: int, count: int, bos: int | None) -> list:
    """`count` consecutive windows of `ctx` tokens: BOS, then ctx-1 text tokens each (ctx text
    tokens when the model has no BOS)."""
    head = [] if bos is None else [bos]
    step = ctx - len(head)
    if step < 2:
        raise ValueError(f"a window of {ctx} tokens holds {max(step, 0)} text tokens{' after BOS' if head else ''}; "
                         f"perplexity needs 2: use a context (--ctx, --tokens) of at least {len(head) + 2}")
    if len(ids) < count * step:
        raise ValueError(f"text has {len(ids)} tokens, {count} windows of {ctx} need {count * step}: "
                         "use fewer windows, a shorter context or a longer text")
    return [np.asarray(head + list(ids[w * step:(w + 1) * step]), "int32") for w in range(count)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@dataclass
class Metrics:
    nll: float = 0.0
    tokens: int = 0
    kl: float = 0.0
    top1: int = 0

    def add(self, logits: np.ndarray, window: np.ndarray, dense_logits: np.ndarray | None, chunk: int = 256):
        targets = window[1:]
        for start in range(0, len(targets), chunk):
            rows = slice(start, min(start + chunk, len(targets)))
            lp = _log_softmax(logits[rows])
            self.nll -= lp[np.arange(lp.shape[0]), targets[rows]].sum()
            if dense_logits is not None:
                ld = _log_softmax(dense_logits[rows])
                self.kl += (np.exp(ld) * (ld - lp)).sum()
                self.top1 += int((ld.argmax(-1) == lp.argmax(-1)).sum())
            self.tokens += lp.shape[0]

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll / self.tokens))

    @property
    def mean_kl(self) -> float:
        return self.kl / self.tokens

    @property
    def top1_agreement(self) -> float:
        return self.top1 / self.tokens
