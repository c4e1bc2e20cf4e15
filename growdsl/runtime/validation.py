"""The validation loss: the model on a fixed set of held-out sequences, the same for every run on
that data, so that losses of different runs (grown or not, any layout) compare."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from growdsl.errors import Diverged
from growdsl.ops.experts import zero_counts
from growdsl.ops.layout import full, reshard
from growdsl.plan.plan import Stage
from growdsl.runtime.distributed import Layout, World
from growdsl.runtime.loss import cross_entropy, loss_parallel
from growdsl.runtime.stream import HeldOut


@dataclass(frozen=True)
class Validation:
    loss: float
    tokens: int  # held-out tokens it was measured on, over every rank
    flops: int  # of its forward passes (not training FLOPs)
    seconds: float


def validate(
    model: nn.Module, heldout: HeldOut, stage: Stage, layout: Layout, world: World, micro: int, mixed: bool
) -> Validation:
    """The loss on the stage's `val tokens` of held-out sequences, each data-parallel rank a share,
    in micro-batches of the training's. Every rank calls it."""
    training, ranks = stage.training, layout.data_parallel
    begin = time.perf_counter()
    device = next(model.parameters()).device
    x, y = heldout.sequences(training.val_tokens, training.seq_len, ranks)
    rank = layout.data_rank(world)
    mine = slice(rank * len(x) // ranks, (rank + 1) * len(x) // ranks)
    x, y = x[mine], y[mine]
    total = torch.zeros((), dtype=torch.float64, device=device)
    model.eval()
    with torch.no_grad(), loss_parallel(layout):
        for i in range(0, len(x), micro):
            xb, yb = x[i : i + micro].to(device), y[i : i + micro].to(device)
            total += full(cross_entropy(model, xb, yb, mixed, reduction="sum")).double()
    model.train()
    reshard(model)  # FSDP keeps the weights it gathered for a forward without a backward
    zero_counts(model)  # its routing balances on the tokens it trains on
    tokens = len(x) * ranks * training.seq_len
    # the mean over every rank of its share's sum: each data slice is counted tp times over `world` ranks
    loss = world.mean(total.item()) * ranks / tokens
    if not math.isfinite(loss):
        raise Diverged(f"the validation loss became {loss} at stage {stage.index}: lower the LR")
    flops = tokens * stage.flops_per_token // 3  # a forward pass: a third of training's
    return Validation(loss, tokens, flops, time.perf_counter() - begin)
