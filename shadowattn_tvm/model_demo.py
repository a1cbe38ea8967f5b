"""`shadowattn demo`: the embedded default model, SmolLM2-135M-Instruct, end to end on this host.

The model (fetched on first use, see `frontend.smollm2`) is compiled twice for one prefill
length: dense (`lowering()`, the same default schedules) and with the shadowAttn pass set and
the shipped per-head profile (`data/smollm2_profile.json`, retargeted to `keep`). Both run the
first window of Pride and Prejudice (BOS first). Reported, all measured in this run: attention
blocks found / rewritten, perplexity of each and the change, mean KL(dense ‖ shadowAttn) and
top-1 agreement of the next-token distributions, and prefill latency (best of `repeat`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .calibrate.profile import SHIPPED_PROFILE, SparsityProfile
from .demo import best_ms, key_value_table
from .evaluation.corpus import load_text
from .evaluation.perplexity import Metrics, windows
from .frontend.model import runner_for
from .passes import AttentionReport, lowering, pipeline


@dataclass
class ModelDemoResult:
    model: str
    tokens: int
    keep: float
    report: AttentionReport
    dense_ppl: float
    sparse_ppl: float
    kl: float
    top1: float
    dense_ms: float
    sparse_ms: float

    def table(self) -> str:
        rows = [
            ("attention blocks found / rewritten", f"{len(self.report.candidates)} / {len(self.report.rewritten)}"),
            ("perplexity, TVM dense", f"{self.dense_ppl:.3f}"),
            ("perplexity, TVM shadowAttn", f"{self.sparse_ppl:.3f}  ({100 * (self.sparse_ppl / self.dense_ppl - 1):+.2f} %)"),
            ("mean KL(dense ‖ shadowAttn), next token", f"{self.kl:.4f}"),
            ("top-1 agreement with dense", f"{100 * self.top1:.2f} %"),
            ("host prefill, TVM dense", f"{self.dense_ms:.0f} ms"),
            ("host prefill, TVM shadowAttn (pilot on the CPU too)", f"{self.sparse_ms:.0f} ms"),
        ]
        return key_value_table(f"shadowAttn demo: {self.model}, {self.tokens}-token prefill of Pride and Prejudice, "
                               f"per-head keep {self.keep}, host CPU", rows)


def run_model_demo(model: str = "smollm2", tokens: int = 512, keep: float = 0.2, repeat: int = 2,
                   text: str = "austen:prideprejudice", profile: SparsityProfile | None = None,
                   tokenizer=None, log=print) -> ModelDemoResult:
    """Compile `model` dense and with shadowAttn, run one window of `text`, compare and time both."""
    runner = runner_for(model, tokenizer)
    profile = (profile or SparsityProfile.load(SHIPPED_PROFILE)).retarget(keep)
    profile.check_model(runner.fingerprint, log)
    window = windows(runner.tokenizer.encode(load_text(text)), tokens, 1, runner.tokenizer.bos_id)[0]
    report = AttentionReport()
    dense = runner.compile(tokens, lowering())
    sparse = runner.compile(tokens, pipeline(keep=None, profile=profile, report=report))
    dense_logits = dense(window)
    dense_metrics, sparse_metrics = Metrics(), Metrics()
    dense_metrics.add(dense_logits, window, None)
    sparse_metrics.add(sparse(window), window, dense_logits)
    return ModelDemoResult(model, tokens, keep, report, dense_metrics.perplexity, sparse_metrics.perplexity,
                           sparse_metrics.mean_kl, sparse_metrics.top1_agreement,
                           best_ms(lambda: dense(window), repeat), best_ms(lambda: sparse(window), repeat))


__all__ = ["ModelDemoResult", "run_model_demo"]
