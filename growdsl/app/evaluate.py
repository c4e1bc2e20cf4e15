"""`growdsl eval`: score a checkpoint on the benchmarks with lm-eval, offline, and record the scores
in its run (RUN/eval/, and a line of history.jsonl)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from growdsl.errors import UsageError


@dataclass(frozen=True)
class Evaluated:
    checkpoint: Path
    model: str  # its shape, described
    tokens: int  # the tokens it was trained on
    results: dict[str, dict[str, float]]  # {task: {metric: value}}
    written: Path  # the results file

    def lines(self) -> list[str]:
        out = [f"{self.checkpoint} ({self.model}, {self.tokens:,} tokens)"]
        for task, values in self.results.items():
            out.append(f"  {task:<16} " + "  ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "samples"))
        return out + [f"results: {self.written}"]


def evaluate_checkpoint(path: Path, tasks: list[str] | None, limit: int | None, batch_size: int) -> Evaluated:
    """Score the checkpoint at `path` (or a run's newest) on `tasks` (default: every task it can,
    the held-out text among them), each on its first `limit` documents if given."""
    import torch

    from growdsl.eval.checkpoints import data_dir, load
    from growdsl.eval.evaluate import default_tasks, run_tasks, write_results
    from growdsl.eval.lm import GrowLM
    from growdsl.runtime.metrics import Metrics

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = load(path, device, appends=True)
    data = data_dir(trained.run_dir)
    heldout = data / "val.jsonl" if data else None
    lm = GrowLM(
        trained.model,
        trained.tokenizer,
        trained.eot_id,
        trained.seq_len,
        bos_id=trained.bos_id,
        device=device,
        batch_size=batch_size,
        mixed=device.type == "cuda",
    )
    results = run_tasks(lm, tasks or default_tasks(heldout), heldout, limit=limit)
    p = trained.progress
    about = {
        "checkpoint": trained.path.name,
        "stage": p.stage,
        "step": p.step if p.phase != "end" else None,
        "global_step": p.global_step,
        "layers": trained.shape.n_layers,
        "tokens": p.position,
        "flops": p.flops,
        "limit": limit,
    }
    try:
        written = write_results(trained.run_dir, trained.label, results, about)
        metrics = Metrics(trained.run_dir)
        metrics.evaluation(p.global_step, p.position, p.flops, results, limit=limit)
        metrics.close()
    except OSError as e:
        raise UsageError(f"cannot write the results into {trained.run_dir}: {e.strerror}") from None
    return Evaluated(trained.path, trained.shape.describe(), p.position, results, written)
