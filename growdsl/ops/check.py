"""The function-preservation check: run one probe batch through the model before and after a
growth and compare logits. The runtime calls it at every growth and logs the result."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from growdsl.ops.layout import full, reshard
from growdsl.plan.plan import Guarantee

# How close "preserved" must be, by declared guarantee and dtype (relative to the logits' scale).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


@dataclass(frozen=True)
class Preservation:
    guarantee: Guarantee
    max_abs_diff: float  # max |logits_after - logits_before|
    scale: float  # max |logits_before|
    tolerance: float  # allowed max_abs_diff / scale for a preserving operator

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.scale, 1e-30)

    @property
    def ok(self) -> bool:
        """False only when an "exact" operator changed the function: "approximate" (RMSNorm over
        unevenly copied dims) and "none" promise no bound."""
        return self.guarantee != "exact" or self.relative <= self.tolerance

    def __str__(self) -> str:
        verdict = "preserved" if self.relative <= self.tolerance else "changed"
        return (
            f"{verdict}: max |Δlogits| {self.max_abs_diff:.3g} ({self.relative:.3g} of max |logits|), "
            f"guarantee {self.guarantee}{'' if self.ok else ' BROKEN'}"
        )


@torch.no_grad()
def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The model's logits on `tokens`, whole (a tensor-parallel head's are sharded over the vocab)."""
    was_training = model.training
    model.eval()
    try:
        return full(model(tokens))
    finally:
        model.train(was_training)
        reshard(model)


def compare(
    before: torch.Tensor, after: torch.Tensor, guarantee: Guarantee, tolerance: float | None = None
) -> Preservation:
    diff = (after.double() - before.double()).abs().max().item()
    scale = before.double().abs().max().item()
    tol = TOLERANCE.get(before.dtype, 1e-5) if tolerance is None else tolerance
    return Preservation(guarantee, diff, scale, tol)


def check_preservation(
    before: nn.Module, after: nn.Module, tokens: torch.Tensor, guarantee: Guarantee, tolerance: float | None = None
) -> Preservation:
    """Logits of `before` and `after` on the same probe batch, compared."""
    return compare(logits(before, tokens), logits(after, tokens), guarantee, tolerance)


@torch.no_grad()
def non_finite(model: nn.Module) -> str | None:
    """The first parameter holding a NaN or an infinity (this process's shard of it), or None."""
    for name, param in model.named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        if not torch.isfinite(local).all():
            return name
    return None
