"""growdsl's trainer against a bare torchtitan 0.2.2 loop on the same model, batch, data, AdamW and
gradient clip, interleaved in one process: the ratio of their tokens/s is what the trainer's own
work costs (LR schedule, loss sync, ramps, logging, the optimizer state it keeps for checkpoints).

Both time the same steps: the trainer's `run()` on a one-stage plan (validation and checkpoints
off), the bare loop over the same token stream; a round runs each once, in alternating order.

    python bench/trainer_overhead.py                  # 4 layers, dim 256, batch 8 x 256, 5 rounds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from growdsl.data.prepare import default_corpus
from growdsl.ops.model import build_model
from growdsl.plan import plan_source
from growdsl.records.data_folder import read_meta, train_files
from growdsl.runtime.stream import TokenStream
from growdsl.runtime.trainer import Trainer

SCHEDULE = """model llama dim {dim} layers {layers} heads {heads} vocab 4096
seq {seq}
batch {batch} seqs
lr 1e-3 to 1e-4
warmup 5 steps
clip 1.0
val off
checkpoint off
train {layers}L for {steps} steps
"""


def bare(plan, data, steps: int) -> float:
    """Seconds for `steps` steps of the plainest loop that trains what the plan's stage trains."""
    stage = plan.stages[0]
    t = stage.training
    torch.manual_seed(t.seed)
    model = build_model(stage.shape, t.seq_len)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=stage.lr.max_lr,
        betas=t.optimizer.betas,
        eps=t.optimizer.eps,
        weight_decay=t.optimizer.weight_decay,
    )
    meta = read_meta(data)
    stream = TokenStream(train_files(data, meta), meta.dtype)  # the token shards, as the trainer reads them
    begin = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = stage.lr.lr_at(step)
        x, y = stream.next_batch(t.batch_seqs, t.seq_len)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.optimizer.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the trainer reads the loss every step too
    return time.perf_counter() - begin


def trainer(plan, data) -> float:
    run = Trainer(plan, data, log=lambda line: None, log_every=10**9)
    begin = time.perf_counter()
    run.run()
    return time.perf_counter() - begin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    data = default_corpus()
    plan = plan_source(SCHEDULE.format(**vars(args)))
    tokens = args.steps * args.batch * args.seq
    ours, theirs = [], []
    for r in range(args.rounds):
        first, second = (trainer, bare) if r % 2 == 0 else (bare, trainer)
        for run in (first, second):
            seconds = run(plan, data) if run is trainer else run(plan, data, args.steps)
            (ours if run is trainer else theirs).append(tokens / seconds)
    print(
        f"{args.layers}L dim {args.dim}, batch {args.batch} x {args.seq}, {args.steps} steps a run, "
        f"{args.rounds} rounds; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'loop':10} {'median tok/s':>13} {'runs':>40}")
    for name, rates in (("bare", theirs), ("growdsl", ours)):
        print(f"{name:10} {statistics.median(rates):13,.0f} {' '.join(f'{x:,.0f}' for x in rates):>40}")
    ratios = [o / t for o, t in zip(ours, theirs)]
    print(
        f"growdsl / bare: {statistics.median(ratios):.3f} (median of the rounds' ratios; "
        f"{min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
