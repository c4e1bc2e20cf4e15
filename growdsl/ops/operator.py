"""The torch side of a growth operator: what the trainer calls at a growth, whichever operator it is.

One subclass per operator in growdsl/ops/operators/NAME.py, beside its description in
growdsl/plan/operators/NAME.py (guarantee, how new units start, options). The trainer builds the
target model, asks the operator for its ramps, lets it write the grown weights, checks the
guarantee, trains its learned map if it has one, and maps the AdamW state through it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from growdsl.ops.depth import carry_depth
from growdsl.ops.experts import Upcycling, carry_experts
from growdsl.ops.optimizer import State
from growdsl.ops.ramp import Ramp
from growdsl.ops.width import carry_width
from growdsl.plan.plan import DepthGrowth, ExpertsGrowth, Growth

Weights = Mapping[str, torch.Tensor]  # a state dict: parameter name -> tensor (or its shard)


class GrowthOperator:
    name: str = ""

    def grow(self, src: Weights, dst: Weights, growth: Growth) -> None:
        """Write the grown weights into `dst`, the target model's state dict (in place), from `src`,
        the base's. `dst` holds the target's own fresh init where nothing is written."""
        raise NotImplementedError

    def carry(self, state: State, growth: Growth, like: Weights | None = None) -> State:
        """The grown model's AdamW state under `optimizer carry`. Depth: moments follow the layer map
        (fresh and zeroed weights start at zero); width: old units keep theirs, new ones start at zero;
        upcycling: every expert takes its feed-forward's (carry_experts). `like`: the grown model's
        parameters, whose layout moments made whole may take at once."""
        if isinstance(growth, DepthGrowth):
            return carry_depth(state, growth)
        if isinstance(growth, ExpertsGrowth):
            return carry_experts(state, growth.experts, self.upcycling(growth), like)
        return carry_width(state, growth, gather=False)

    def upcycling(self, growth: ExpertsGrowth) -> Upcycling:
        """How the experts of an upcycling start (an operator that upcycles says)."""
        raise NotImplementedError

    def ramps(self, model: nn.Module, growth: Growth) -> list[Ramp]:
        """Attach the masks that fade new layers or units in (before the weights are written); none
        unless the operator has a ramp."""
        return []

    def learner(self, src: Weights, growth: Growth) -> nn.Module | None:
        """A growth map to train alone before training goes on: `learner(model, tokens)` gives the
        target's logits, `learner.bake(dst)` writes its weights. None: nothing to learn."""
        return None
