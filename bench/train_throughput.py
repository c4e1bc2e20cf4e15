"""Training throughput of growdsl's trainer: tokens/s and MFU of one stage, with and without
torch.compile, on the shapes of the anchor in ../shared/gpu/README.md (24L dim 1024; the 1.1B
shape, 22L dim 2048 GQA), batch 8 x 2048, bf16 mixed precision on a GPU.

Steady-state speed: the time of the steps after the first `--warmup` (compile happens there).
The data is the default corpus (real text; its 4096-token vocabulary read by a 32k-vocab model
costs the same FLOPs as any other text).

    python bench/train_throughput.py                           # both shapes, compile off and on
    python bench/train_throughput.py --shapes tiny --steps 20 --batch 8 --seq 128   # a CPU check
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from growdsl.data.prepare import default_corpus
from growdsl.plan import plan_source
from growdsl.runtime.trainer import Trainer

SHAPES = {  # the model statement and the layers trained
    "410M": ("model 410M", 24),  # dim 1024: the anchor's first shape
    "1.1B": ("model 1.1B", 22),  # dim 2048, 4 KV heads: TinyLlama, the anchor's second shape
    "tiny": ("model tiny", 4),
}


class StepClock:
    """Stands in for the TensorBoard writer: records when every optimizer step ended."""

    def __init__(self):
        self.ends: list[float] = []

    def step(self, step, tokens, flops, **scalars):
        self.ends.append(time.perf_counter())

    def text(self, *args):
        pass


def measure(shape: str, compile_: bool, steps: int, warmup: int, batch: int, seq: int, data) -> dict:
    model, layers = SHAPES[shape]
    source = (
        f"{model}\nseq {seq}\nbatch {batch} seqs\nlr 3e-4 to 3e-5\nwarmup 10 steps\n"
        f"train {layers}L for {steps} steps with compile {'on' if compile_ else 'off'}\n"
    )
    plan = plan_source(source)
    stage = plan.stages[0]
    clock = StepClock()
    trainer = Trainer(plan, data, log=lambda _: None, log_every=10**9, metrics=clock)
    trainer.run()
    timed = clock.ends[warmup:]
    seconds = (timed[-1] - timed[0]) / (len(timed) - 1)
    rate = stage.training.tokens_per_step / seconds
    mfu = rate * stage.flops_per_token / trainer.peak_flops if trainer.peak_flops else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "shape": f"{shape} ({stage.shape.n_layers}L dim {stage.shape.dim})",
        "compile": compile_,
        "params": stage.params,
        "tokens_s": rate,
        "mfu": mfu,
        "step_s": seconds,
        "memory": memory,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["410M", "1.1B"], choices=sorted(SHAPES))
    ap.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument(
        "--data",
        type=Path,
        help="a prepared data folder (default: the default corpus, fetched once; "
        "the GPU machine has no network: carry one)",
    )
    args = ap.parse_args()
    data = args.data or default_corpus()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"growdsl trainer, torch {torch.__version__}, {device}; batch {args.batch} x {args.seq}, "
        f"{args.steps} steps, timed after step {args.warmup}"
    )
    rows = [
        measure(s, c == "on", args.steps, args.warmup, args.batch, args.seq, data)
        for s in args.shapes
        for c in args.compile
    ]
    print(f"{'shape':<24} {'compile':>7} {'params':>8} {'tokens/s':>10} {'MFU':>6} {'s/step':>7} {'peak GiB':>9}")
    for r in rows:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        memory = f"{r['memory']:.1f}" if r["memory"] is not None else "-"
        print(
            f"{r['shape']:<24} {'on' if r['compile'] else 'off':>7} {r['params'] / 1e6:>7,.0f}M "
            f"{r['tokens_s']:>10,.0f} {mfu:>6} {r['step_s']:>7.3f} {memory:>9}"
        )


if __name__ == "__main__":
    main()
