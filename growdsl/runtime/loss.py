"""The training loss: cross-entropy of the model's next-token logits, under every layout."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from growdsl.runtime.building import autocast
from growdsl.runtime.distributed import Layout


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mixed: bool, reduction: str = "mean"):
    """Cross-entropy of `model` on one micro-batch, on logits in the weights' precision (under mixed
    precision the model computes in bf16). A tensor-parallel head's logits stay sharded over the
    vocab: the loss is computed shard-wise (call it inside `loss_parallel`)."""
    with autocast(model, mixed):
        logits = model(x)
    dtype = next(model.parameters()).dtype
    return F.cross_entropy(logits.flatten(0, 1).to(dtype), y.flatten(), reduction=reduction)


def loss_parallel(layout: Layout):
    """torch's loss-parallel context where the model is tensor-parallel (forward and backward)."""
    if layout.tp > 1:
        from torch.distributed.tensor.parallel import loss_parallel as sharded_loss

        return sharded_loss()
    return nullcontext()
