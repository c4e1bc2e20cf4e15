"""TensorBoard logs of a run. Every scalar is logged against the global step, and the loss also
against cumulative tokens and cumulative FLOPs (the base model's compute counted, as the paper
does), so a scratch run and a grown run overlay on one compute axis. Growth events are text.

TensorBoard steps are 64-bit integers: FLOPs are logged in GFLOPs (a 7B model on 300B tokens is
~1.3e13 GFLOPs)."""

from __future__ import annotations

import json
import resource
from dataclasses import asdict
from pathlib import Path

import torch

from growdsl.records.history import EvalLine, GrowthLine, StepLine, ValLine
from growdsl.records.run_record import HISTORY


class Metrics:
    """TensorBoard under RUN/tensorboard, and the same numbers as JSON lines in RUN/history.jsonl
    (what `growdsl compare` reads: a step's line, a validation's, a growth's, an evaluation's; after a resume the
    steps redone appear again, and the last line of a step is the one that counts)."""

    def __init__(self, run_dir: Path, owner: bool = False):
        """`owner`: this process holds the run directory (growdsl.runtime.rundir), so it may cut off a
        line a killed run left torn; an evaluation beside a running training only appends."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        history = run_dir / HISTORY
        if owner:
            _drop_torn_line(history)
        self.history = history.open("a", buffering=1)
        if not owner and _ends_torn(history):  # its own line must not be glued to a torn one
            self.history.write("\n")

    def step(self, step: int, tokens: int, flops: int, **scalars: float) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.add_scalar("loss_vs/tokens", scalars["loss"], tokens)
        self.writer.add_scalar("loss_vs/gflops", scalars["loss"], flops // 10**9)
        self.writer.add_scalar("progress/cumulative_tokens", tokens, step)
        self.writer.add_scalar("progress/cumulative_gflops", flops // 10**9, step)
        self._line({**asdict(StepLine(step, tokens, flops, scalars["loss"])), **scalars})

    def validation(self, step: int, tokens: int, flops: int, *, loss: float, val_data: str, **cost: float) -> None:
        """The held-out loss, on the step, tokens and training-FLOPs axes; its own cost beside it;
        `val_data` names the held-out split, so that runs on different ones are never compared."""
        self.writer.add_scalar("val/loss", loss, step)
        self.writer.add_scalar("val_vs/tokens", loss, tokens)
        self.writer.add_scalar("val_vs/gflops", loss, flops // 10**9)
        for name, value in cost.items():
            self.writer.add_scalar(f"val/{name}", value, step)
        line = ValLine(
            "val", step, tokens, flops, loss, val_data, int(cost["val_tokens"]) if "val_tokens" in cost else None
        )
        self._line({**asdict(line), **cost})

    def growth(self, step: int, tokens: int, flops: int, text: str) -> None:
        self.writer.add_text("growth", text, step)
        self._line(asdict(GrowthLine("growth", step, tokens, flops, text)))

    def evaluation(
        self, step: int, tokens: int, flops: int, results: dict[str, dict[str, float]], limit: int | None = None
    ) -> None:
        """Benchmark scores; `limit`: scored on each task's first `limit` documents only."""
        for task, metrics in results.items():
            for name, value in metrics.items():
                self.writer.add_scalar(f"eval/{task}/{name}", value, step)
        line = asdict(EvalLine("eval", step, results, tokens, flops, limit or None))
        self._line(line if limit else {k: v for k, v in line.items() if k != "limit"})

    def _line(self, record: dict) -> None:
        self.history.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.writer.close()
        self.history.close()


def _ends_torn(path: Path) -> bool:
    with path.open("rb") as f:
        size = f.seek(0, 2)
        return size > 0 and f.seek(size - 1) >= 0 and f.read(1) != b"\n"


def _drop_torn_line(path: Path) -> None:
    """A run killed while writing a line leaves it torn: cut it off before a resume appends."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        size = f.seek(0, 2)
        if size == 0:
            return
        f.seek(max(0, size - (1 << 16)))
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        f.truncate(size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= len(tail) else size))


def memory_gib(device: torch.device = torch.device("cpu")) -> float:
    """Peak memory: the GPU's allocated memory, or this process's resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_flops(device: torch.device) -> float | None:
    """The device's peak dense bf16 FLOP/s (torchtitan's table), the denominator of MFU; None on a CPU."""
    if device.type != "cuda":
        return None
    from torchtitan.tools.utils import get_peak_flops

    return get_peak_flops(torch.cuda.get_device_name(device))
