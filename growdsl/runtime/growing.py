"""One growth of the live model, step by step: build the target laid out as the stage trains it
(with the operator's ramps), write its weights from the base's, check the operator's guarantee on a
held-out probe batch, train the operator's learned map first if it has one (LiGO), and carry the
AdamW state through it (or reset it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from growdsl.errors import RunError
from growdsl.ops import operators
from growdsl.ops.check import Preservation, check_preservation
from growdsl.ops.experts import zero_counts
from growdsl.ops.layout import named_parameters, state_dict
from growdsl.ops.optimizer import State
from growdsl.ops.ramp import Ramp
from growdsl.plan.plan import DepthGrowth, ExpertsGrowth, Growth, Stage
from growdsl.plan.render import growth_line
from growdsl.plan.shape import ModelShape
from growdsl.runtime.building import ModelBuilder, autocast
from growdsl.runtime.distributed import World
from growdsl.runtime.mixture import Mixture


@dataclass
class Grown:
    model: nn.Module
    shape: ModelShape
    ramps: list[Ramp]
    mixed: bool
    state: State  # what the grown model's AdamW starts from
    check: Preservation  # base and grown model on the probe batch (when it is broken, nothing else was done)
    flops: int = 0  # spent training a learned map


def grow(
    growth: Growth,
    stage: Stage,
    model: nn.Module,
    shape: ModelShape,
    state: State,
    *,
    builder: ModelBuilder,
    probe: torch.Tensor,
    data: Mixture,
    world: World,
    log: Callable[[str], None],
) -> Grown:
    """`model` (of `shape`, with AdamW state `state`) grown by `growth` as `stage` trains it. The
    check is logged; a broken guarantee returns at once (the caller stops the run)."""
    op = operators.get(growth.operator)
    target_shape = _grown_shape(shape, growth)
    torch.manual_seed(stage.training.seed + stage.index)  # the target's own init is what its new units keep
    built = builder.build(target_shape, stage, lambda target: op.ramps(target, growth))
    src = state_dict(model)
    op.grow(src, state_dict(built.model), growth)
    # rank 0's verdict for every rank: a stop taken by one rank alone would leave the others waiting
    check = world.share(check_preservation(model, built.model, probe, growth.guarantee))
    zero_counts(built.model)  # the check routed tokens that no training step did
    log(f"growth {growth_line(growth)}")
    log(f"growth (line {growth.line}): {what(growth)} -> {target_shape.describe()}; {check}")
    grown = Grown(built.model, target_shape, built.ramps, built.mixed, state, check)
    if not check.ok:
        return grown
    if growth.learn is not None:
        if world.size > 1:
            raise RunError(
                f"a learned growth map (`init {growth.operator}`, line {growth.line}) runs on one process for now"
            )
        _learn(op.learner(src, growth), growth, grown, stage, data, log)
        grown.flops = growth.learn.flops
    grown.state = operators.grown_state(growth.optimizer, state, growth, named_parameters(built.model))
    return grown


def what(growth: Growth) -> str:
    """The growth in two words, for logs: `depth direct`, `width zero`, `upcycle drop`."""
    return f"{'upcycle' if isinstance(growth, ExpertsGrowth) else growth.kind} {growth.operator}"


def _grown_shape(shape: ModelShape, growth: Growth) -> ModelShape:
    if isinstance(growth, DepthGrowth):
        return replace(shape, n_layers=growth.target_layers)
    if isinstance(growth, ExpertsGrowth):
        return replace(shape, experts=growth.experts)
    return growth.target


def _learn(learner, growth: Growth, grown: Grown, stage: Stage, data: Mixture, log) -> None:
    """Train the growth's map alone for its steps on the training stream, then bake it into the target."""
    phase = growth.learn
    assert phase is not None
    opt = torch.optim.AdamW(learner.parameters(), lr=phase.lr)
    training, device = stage.training, next(grown.model.parameters()).device
    for step in range(phase.steps):
        for group in opt.param_groups:
            group["lr"] = phase.lr * min(1.0, (step + 1) / max(1, phase.warmup_steps))
        x, y = (b.to(device) for b in data.next_batch(training.batch_seqs, training.seq_len))
        with autocast(grown.model, grown.mixed):
            loss = F.cross_entropy(learner(grown.model, x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    learner.bake(state_dict(grown.model))
    log(f"growth map (line {growth.line}) trained for {phase.steps} steps (last loss {loss.item():.4f}) and baked in")
