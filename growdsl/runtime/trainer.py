"""Train a plan from the first token to the end, growing the live model in memory at every stage
boundary (one process; FSDP, checkpoints and TensorBoard come with the distributed runtime).

At a growth: build the target model (torchtitan's Transformer, meta -> init), write the grown
weights with growdsl.ops, attach the ramps of random operators, run the preservation check on a
held-out probe batch and log it, train a LiGO map first where the operator is `learn`, and start
the target's AdamW from reset or carried state. The data stream goes on where the base stopped."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from growdsl.ops import ramp
from growdsl.ops.check import check_preservation
from growdsl.ops.depth import attach_depth_ramps, grow_depth
from growdsl.ops.ligo import LigoDepth, LigoWidth
from growdsl.ops.model import build_model
from growdsl.ops.optimizer import grown_state, load_named_state, named_state
from growdsl.ops.width import grow_width
from growdsl.plan.plan import DepthGrowth, Plan, Stage
from growdsl.runtime.data import Meta, TokenStream, load_meta


class RunError(Exception):
    """A run cannot go on; the message says why and what to do."""


@dataclass
class StageLog:
    index: int
    losses: list[float] = field(default_factory=list)
    growth_checks: list[str] = field(default_factory=list)
    data_position_at_start: int = 0
    seconds: float = 0.0


class Trainer:
    def __init__(self, plan: Plan, data_dir: Path, *, log: Callable[[str], None] = print, log_every: int = 50):
        self.plan, self.data_dir, self.log, self.log_every = plan, data_dir, log, log_every
        self.meta: Meta = load_meta(data_dir)
        widest = max(s.shape.vocab_size for s in plan.stages)
        if self.meta.vocab_size > widest:
            raise RunError(f"the data's tokenizer has {self.meta.vocab_size} tokens but the model's vocab is {widest}: "
                           f"set vocab {self.meta.vocab_size} (or more) in the model statement")
        self.stream = TokenStream(data_dir / "train.bin", self.meta.dtype)
        self.max_seq = max(s.training.seq_len for s in plan.stages)
        first = plan.stages[0].training
        probe = TokenStream(data_dir / "val.bin", self.meta.dtype)
        self.probe = probe.next_batch(min(4, first.batch_seqs), first.seq_len)[0]
        torch.manual_seed(first.seed)
        self.shape = plan.stages[0].shape
        self.model = build_model(self.shape, self.max_seq)
        self.state: dict = {}  # AdamW state by parameter name, carried across a growth
        self.ramps: list[_Ramp] = []

    def run(self) -> list[StageLog]:
        logs = []
        for stage in self.plan.stages:
            log = StageLog(stage.index)
            for growth in stage.growths:
                log.growth_checks.append(self._grow(growth, stage))
            log.data_position_at_start = self.stream.position
            start = time.perf_counter()
            self._train(stage, log)
            log.seconds = time.perf_counter() - start
            logs.append(log)
        return logs

    # ---- growth ----------------------------------------------------------------------------

    def _grow(self, growth, stage: Stage) -> str:
        before = self.model
        depth = isinstance(growth, DepthGrowth)
        self.shape = replace(self.shape, n_layers=growth.target_layers) if depth else growth.target
        torch.manual_seed(stage.training.seed + stage.index)
        target = build_model(self.shape, self.max_seq)
        self.ramps = []
        if growth.operator == "random":
            if depth:
                self.ramps = [_Ramp(target.layers[str(i)], growth.ramp_steps, False)
                              for i in attach_depth_ramps(target, growth)]
            else:
                ramp.attach_width_ramp(target, growth.source.dim, growth.source.n_heads, growth.source.ffn_dim)
                self.ramps = [_Ramp(target, growth.ramp_steps, True)]
        src, dst = before.state_dict(), target.state_dict()
        (grow_depth if depth else grow_width)(src, dst, growth)
        check = check_preservation(before, target, self.probe, growth.guarantee)
        kind = f"{growth.kind} {growth.operator}"
        self.log(f"growth (line {growth.line}): {kind} -> {self.shape.describe()}; {check}")
        if not check.ok:
            raise RunError(f"the {kind} growth on line {growth.line} broke its guarantee: {check}")
        if growth.learn is not None:
            self._learn(growth, src, target, stage)
        self.state = grown_state(growth.optimizer, self.state, growth)
        self.model = target
        return str(check)

    def _learn(self, growth, src, target, stage: Stage) -> None:
        """Train the LiGO map alone for its steps on the stream, then bake it into the target."""
        ligo = (LigoDepth if isinstance(growth, DepthGrowth) else LigoWidth)(src, growth)
        phase = growth.learn
        opt = torch.optim.AdamW(ligo.parameters(), lr=phase.lr)
        t = stage.training
        for step in range(phase.steps):
            for group in opt.param_groups:
                group["lr"] = phase.lr * min(1.0, (step + 1) / max(1, phase.warmup_steps))
            x, y = self.stream.next_batch(t.batch_seqs, t.seq_len)
            loss = F.cross_entropy(ligo(target, x).flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        ligo.bake(target.state_dict())
        self.log(f"LiGO map trained for {phase.steps} steps (last loss {loss.item():.4f}) and baked in")

    # ---- training --------------------------------------------------------------------------

    def _train(self, stage: Stage, log: StageLog) -> None:
        t = stage.training
        opt = torch.optim.AdamW(self.model.parameters(), lr=stage.lr.max_lr, betas=t.optimizer.betas,
                                eps=t.optimizer.eps, weight_decay=t.optimizer.weight_decay)
        if self.state:
            load_named_state(self.model, opt, self.state)
        micro = t.micro_batch or t.batch_seqs
        accumulate = t.batch_seqs // micro
        self.model.train()
        start = time.perf_counter()
        for step in range(stage.steps):
            lr = stage.lr.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            total = 0.0
            for _ in range(accumulate):
                x, y = self.stream.next_batch(micro, t.seq_len)
                loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten()) / accumulate
                loss.backward()
                total += loss.item()
            if not math.isfinite(total):
                raise RunError(f"loss became {total} at stage {stage.index} step {step} "
                               f"(token {self.stream.position:,}): lower the LR or check the data")
            if t.optimizer.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.optimizer.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            self._advance_ramps()
            log.losses.append(total)
            if (step + 1) % self.log_every == 0 or step + 1 == stage.steps:
                rate = (step + 1) * t.tokens_per_step / (time.perf_counter() - start)
                self.log(f"stage {stage.index} step {step + 1}/{stage.steps}  loss {total:.4f}  lr {lr:.2e}  "
                         f"{rate:,.0f} tok/s")
        self.state = named_state(self.model, opt)

    def _advance_ramps(self) -> None:
        """One optimizer step more on every ramp; a ramp at 1 is removed (the plain model stays)."""
        for r in self.ramps:
            r.step += 1
            ramp.set_ramp(r.module, ramp.ramp_value(r.step, r.steps))
            if r.step >= r.steps:
                (ramp.remove_width_ramp if r.width else ramp.remove_ramp)(r.module)
        self.ramps = [r for r in self.ramps if r.step < r.steps]


@dataclass
class _Ramp:
    module: torch.nn.Module
    steps: int
    width: bool
    step: int = 0
