"""Train a plan from the first token to the end, growing the live model in memory at every stage
boundary, on one process or many (torchrun: FSDP2 / TP / AC / compile via torchtitan).

The trainer coordinates; its parts are elsewhere: the checks before anything is built
(runtime.inputs), building a laid-out model (runtime.building), one growth (runtime.growing), the
loss (runtime.loss), validation (runtime.validation), when to log, validate, checkpoint and evaluate
(runtime.cadence), and resuming (runtime.resume). The data goes on where the base stopped: one
prepared folder read front to back, or a mixture of several (runtime.mixture), reweighted as each
stage begins.

With a checkpoint folder it checkpoints at every stage end (before a growth), right after every
growth, and at the plan's cadence; `resume=True` goes on from the newest good checkpoint, never
re-applying or skipping a growth, and refuses a schedule changed before that point."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from growdsl.errors import Diverged, RunError
from growdsl.ops.check import non_finite
from growdsl.ops.experts import balance, routing_loss
from growdsl.ops.layout import full, laid_out_like, named_parameters, reshard, state_dict, write_full
from growdsl.ops.model import build_model
from growdsl.ops.optimizer import State, load_named_state, named_state, parameter_names
from growdsl.ops.ramp import Ramp
from growdsl.plan.data import RunData
from growdsl.plan.imported import ModelFolderError
from growdsl.plan.plan import Growth, Plan, Stage, Start, stage_record
from growdsl.records.progress import Phase
from growdsl.runtime import checkpoint, resume
from growdsl.runtime.building import ModelBuilder
from growdsl.runtime.cadence import Cadence, evaluates_after, evaluation_point
from growdsl.runtime.distributed import Layout, World
from growdsl.runtime.growing import grow, what
from growdsl.runtime.inputs import read_inputs
from growdsl.runtime.loss import cross_entropy, loss_parallel
from growdsl.runtime.metrics import Metrics, memory_gib, peak_flops
from growdsl.runtime.pretrained import load_start
from growdsl.runtime.resume import FIRST_STEP, ResumePoint
from growdsl.runtime.validation import validate

__all__ = ["Evaluator", "RunError", "StageLog", "Trainer"]


@dataclass
class StageLog:
    index: int
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # before clipping, over every rank's gradients
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (global step, validation loss)
    growth_checks: list[str] = field(default_factory=list)
    data_position_at_start: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class EvaluationPoint:
    stage: Stage
    step: int


class Evaluator(Protocol):
    """What the trainer calls at the schedule's evaluation points (growdsl.eval.in_run)."""

    def __call__(self, model: torch.nn.Module, stage: Stage, about: dict) -> dict:
        """Score the live model; {task: {metric: value}}. Every rank calls it."""

    def written(self, stage: Stage, step: int) -> bool:
        """Whether the scores of that point are in the run directory (every rank gets rank 0's answer)."""


class Trainer:
    def __init__(
        self,
        plan: Plan,
        data: Path | RunData,
        *,
        log: Callable[[str], None] = print,
        log_every: int = 50,
        checkpoint_dir: Path | None = None,
        resume: bool = False,
        metrics: Metrics | None = None,
        world: World = World(),
        dtype: torch.dtype = torch.float32,
        progress=None,
        mixed_precision: bool | None = None,
        evaluator: Evaluator | None = None,
        until: int | None = None,
    ):
        self.plan, self.world, self.log_every = plan, world, log_every
        # stop after this global step, validated and checkpointed there (a resume goes on); None: the end
        self.until = until
        self.stopped = False  # `run` ended at `until`, before the schedule's end
        self.expert_load: torch.Tensor | None = None  # a mixture's tokens per expert at the last step (a row each)
        self.sources = data if isinstance(data, RunData) else RunData.single(data, len(plan.stages))
        self.log = log if world.main else (lambda line: None)
        self.checkpoint_dir, self.resume, self.metrics = checkpoint_dir, resume, metrics
        self.evaluator = evaluator  # the schedule's evaluations (growdsl.eval.in_run), at its eval points
        self.progress = progress if world.main else None  # a StageProgress, on a terminal
        self.peak_flops = peak_flops(world.device)  # per device, for MFU; None on a CPU
        self.builder = ModelBuilder(max(s.training.seq_len for s in plan.stages), dtype, world, mixed_precision)
        self.inputs = read_inputs(plan, self.sources, world, self.builder, self.log)
        self.data = self.inputs.data
        self.val_data = self.inputs.heldout.digest()  # names the held-out split in the metrics
        # what the run has done: checkpoints written, optimizer steps, training FLOPs (learned maps
        # included) and validation's forward FLOPs (counted apart)
        self.saves = self.global_step = self.flops = self.val_flops = 0
        torch.manual_seed(plan.stages[0].training.seed)
        # the model: a stage-0 model, or the one it starts from (loaded by `start`); stage 0's growths come in `run`
        self.shape = plan.start.shape if plan.start else plan.stages[0].shape
        self._build(plan.stages[0])
        self.state: State = {}  # AdamW state by parameter name between stages (in a stage: self.opt's)
        self.opt: torch.optim.Optimizer | None = None  # the stage's optimizer while it trains
        self.opt_names: dict[int, str] = {}  # its parameters' names
        self.started: ResumePoint | None = None  # see `start`
        self.owed: EvaluationPoint | None = None  # the resumed checkpoint's evaluation point, if it is one

    @property
    def probe(self) -> torch.Tensor:
        return self.inputs.probe

    @property
    def layouts(self) -> list[Layout]:
        return self.inputs.layouts

    def start(self) -> None:
        """Where training starts: the first step, or (resuming) the newest good checkpoint, loaded and
        checked against the schedule. Separate from `run` so that a caller can refuse before anything
        is written; `run` calls it if the caller did not."""
        self.started = self._restore() if self.resume else None
        if self.started is None:  # from the first step: from the model the schedule starts from, if any
            self.started = FIRST_STEP
            if self.plan.start:  # every rank reads it (a resume needs nothing of it): agreed first
                folder = self.plan.start.folder
                missing = None if Path(folder).is_dir() else f"{folder} (the model the run starts from) is not here"
                missing = self.world.first_failure(missing)
                if missing:
                    raise RunError(missing)
                self._load_start(self.plan.start)

    def run(self) -> list[StageLog]:
        """Train every stage (the rest of them, when resuming); a log per stage trained."""
        if self.started is None:
            self.start()
        assert self.started is not None  # start() sets it
        at = self.started
        if self.owed and self.evaluator is not None and not self.evaluator.written(self.owed.stage, self.owed.step):
            # committed, then stopped before its evaluation was written: the run still owes it
            stage, step = self.owed.stage, self.owed.step
            self.log(f"stage {stage.index} step {step}: its evaluation was never written: evaluating now")
            self._evaluate(stage, step)
        logs = []
        for stage in self.plan.stages[at.stage :]:
            if self.until is not None and self.global_step >= self.until:  # before the stage's growths
                self.stopped = True
                break
            resumed_here = stage.index == at.stage
            log = StageLog(stage.index, growth_checks=list(at.growth_checks) if resumed_here and at.grown else [])
            if not (resumed_here and at.grown):  # else its growths are in the checkpoint already
                self.data.reweight(list(self.sources.weights[stage.index]))  # the stage's mixture, counted afresh
                for growth in stage.growths:
                    log.growth_checks.append(self._grow(growth, stage))
                if stage.growths:
                    self._save(stage.index, "start", 0, log.growth_checks)
                elif stage.index and stage.training.parallel != self.plan.stages[stage.index - 1].training.parallel:
                    self._reparallelize(stage)
            log.data_position_at_start = self.data.position
            begin = time.perf_counter()
            self._train(stage, log, at.step if resumed_here else 0)
            log.seconds = time.perf_counter() - begin
            if self.stopped:  # at `until`, inside the stage
                logs.append(log)
                break
            self._save(stage.index, "end", stage.steps, log.growth_checks)
            if evaluates_after(self.plan, stage):
                self._evaluate(stage, stage.steps)
            logs.append(log)
        return logs

    def folders_read(self) -> set[int]:
        """The data folders (by number) the run has read from so far: after `start`, what the
        checkpoint it resumes from has read."""
        return {i for i, stream in enumerate(self.data.streams) if stream.position}

    # ---- the model -------------------------------------------------------------------------

    def _build(self, stage: Stage, put_ramps=None) -> None:
        """A fresh model of the current shape laid out as `stage` trains it (runtime.building)."""
        built = self.builder.build(self.shape, stage, put_ramps)
        self.model, self.ramps, self.mixed = built.model, built.ramps, built.mixed

    def _grow(self, growth: Growth, stage: Stage) -> str:
        """One growth (runtime.growing), recorded in the metrics; a broken guarantee stops the run.
        Returns the check, as logged."""
        grown = grow(
            growth,
            stage,
            self.model,
            self.shape,
            self.state,
            builder=self.builder,
            probe=self.probe,
            data=self.data,
            world=self.world,
            log=self.log,
        )
        grew = what(growth)
        if self.metrics:
            self.metrics.growth(
                self.global_step,
                self.data.position,
                self.flops,
                f"line {growth.line}: {grew} -> {grown.shape.describe()}; {grown.check}",
            )
        if not grown.check.ok:
            raise RunError(f"the {grew} growth on line {growth.line} broke its guarantee: {grown.check}")
        self.model, self.shape, self.ramps, self.mixed = grown.model, grown.shape, grown.ramps, grown.mixed
        self.state, self.flops = grown.state, self.flops + grown.flops
        return str(grown.check)

    def _reparallelize(self, stage: Stage) -> None:
        """A stage that changes its parallelism (AC, compile, degrees) without growing: the same
        weights, ramps and AdamW state, laid out again under the new settings. Tensor by tensor
        through the whole tensor, as the layouts may differ."""
        old, recorded = state_dict(self.model), [r.describe() for r in self.ramps]
        self._build(stage, lambda m: [Ramp.restore(m, r) for r in recorded])
        with torch.no_grad():
            for name, t in state_dict(self.model).items():
                write_full(t, full(old[name]))
        self.state = self._laid_out_state(self.state)
        parallel = stage.training.parallel
        self.log(
            f"stage {stage.index}: parallelism now dp_shard {parallel.dp_shard or 'auto'}, "
            f"dp_replicate {parallel.dp_replicate}, tp {parallel.tp}, ac {parallel.activation_checkpoint}, "
            f"compile {'on' if parallel.compile else 'off'}"
        )

    def _laid_out_state(self, state: State) -> State:
        """AdamW state laid out as the model's parameters (a carried moment may come whole)."""
        params = named_parameters(self.model)
        return {
            name: {k: v if v.dim() == 0 else laid_out_like(v, params[name]) for k, v in moments.items()}
            for name, moments in state.items()
        }

    def _load_start(self, start: Start) -> None:
        """The weights of the model the schedule starts from, into the stage-0 model (laid out as it trains)."""
        with torch.random.fork_rng(devices=[]):  # a run from its first step draws what it would without it
            whole = build_model(start.shape, self.builder.max_seq, dtype=self.builder.dtype, device="cpu")
        try:
            load_start(start, whole, self.builder.max_seq)
        except ModelFolderError as e:
            raise RunError(str(e)) from None
        weights = whole.state_dict()
        with torch.no_grad():
            for name, t in state_dict(self.model).items():
                if name != "freqs_cis":
                    write_full(t, weights[name].to(self.world.device))
        self.flops = start.flops  # what it cost, as stated or recorded

    # ---- training --------------------------------------------------------------------------

    def _train(self, stage: Stage, log: StageLog, first_step: int = 0) -> None:
        """Steps `first_step + 1` to the stage's last, and what its cadence asks for between them."""
        training, lay = stage.training, self.layouts[stage.index]
        opt = self._optimizer(stage)
        micro = (
            training.micro_batch or training.batch_seqs // lay.data_parallel
        )  # the batch splits evenly: checked up front
        cadence = Cadence(stage, self.log_every, first_step, self.global_step - first_step)
        last = stage.steps
        if self.until is not None and self.until - cadence.first_global < stage.steps:
            last = max(first_step, self.until - cadence.first_global)  # `until` falls inside this stage
        self.model.train()
        begin = time.perf_counter()
        for step in range(first_step + 1, last + 1):
            lr = stage.lr.lr_at(step - 1)
            loss, grad_norm = self._step(stage, opt, lr, micro, f"stage {stage.index} step {step}/{stage.steps}")
            self.ramps = [r for r in self.ramps if not r.advance()]  # an ended ramp is gone: the plain model stays
            log.losses.append(loss)
            log.grad_norms.append(grad_norm)
            self.global_step += 1
            self.flops += stage.flops_per_token * training.tokens_per_step
            rate = (step - first_step) * training.tokens_per_step / (time.perf_counter() - begin)
            self._report(stage, step, loss, lr, grad_norm, rate, cadence.logs(step))
            if cadence.validates(step):
                log.val_losses.append((self.global_step, self._validate(stage, step, micro, lay)))
            if cadence.checkpoints(step):
                self._save(stage.index, "start", step, log.growth_checks)
            if cadence.evaluates(step):
                self._evaluate(stage, step)
        if last < stage.steps:  # stopped at `until`: measured and saved there, so that a resume goes on from it
            if last > first_step and not cadence.validates(last) and training.val_every_steps:
                log.val_losses.append((self.global_step, self._validate(stage, last, micro, lay)))
            if last > first_step and not cadence.checkpoints(last):
                self._save(stage.index, "start", last, log.growth_checks)
            self.stopped = True
        self.state, self.opt = named_state(self.opt_names, opt), None

    def _optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        """The stage's AdamW over what trains (`freeze` holds the rest), from the state carried into it."""
        optimizer = stage.training.optimizer
        for name, p in named_parameters(self.model).items():
            p.requires_grad_(not stage.frozen.holds(name))
        trained = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            trained, lr=stage.lr.max_lr, betas=optimizer.betas, eps=optimizer.eps, weight_decay=optimizer.weight_decay
        )
        carried = self._laid_out_state({k: v for k, v in self.state.items() if not stage.frozen.holds(k)})
        if carried:
            load_named_state(self.model, opt, carried)
        self.opt, self.opt_names, self.state = opt, parameter_names(self.model), {}
        return opt

    def _step(self, stage: Stage, opt: torch.optim.Optimizer, lr: float, micro: int, where: str) -> tuple[float, float]:
        """One optimizer step over this rank's share of the global batch, in micro-batches: the loss
        (the mean over every rank) and the gradient norm before clipping."""
        training, lay = stage.training, self.layouts[stage.index]
        for group in opt.param_groups:
            group["lr"] = lr
        accumulate = training.batch_seqs // lay.data_parallel // micro
        parts = []
        for _ in range(accumulate):
            x, y = self._micro_batch(micro, training.seq_len, lay)
            with loss_parallel(lay):
                loss = cross_entropy(self.model, x, y, self.mixed) / accumulate
                aux = routing_loss(self.model)  # a mixture's load-balancing loss trains; the loss logged is the LM's
                (loss if aux is None else loss + aux / accumulate).backward()
                routing_loss(self.model)  # what activation checkpointing's recompute routed again: dropped
            parts.append(full(loss.detach()))
        total = self.world.mean(torch.stack(parts).sum().item())  # one host sync a step
        where += f" (token {self.data.position:,})"
        if not math.isfinite(total):
            raise Diverged(f"the loss became {total} at {where}, before its update: lower the LR or check the data")
        clip = training.optimizer.grad_clip if training.optimizer.grad_clip > 0 else float("inf")
        grad_norm = float(full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)))
        if not math.isfinite(grad_norm):
            raise Diverged(f"the gradient norm became {grad_norm} at {where}, before its update: lower the LR")
        opt.step()
        opt.zero_grad(set_to_none=True)
        # a mixture's routing bias moves towards its less used experts (torchtitan's load balancing), on the
        # counts of every rank: with experts, every rank is data-parallel (tp is refused)
        self.expert_load = balance(self.model, self._summed if self.world.size > 1 else None)
        return total, grad_norm

    @staticmethod
    def _summed(t: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(t)
        return t

    def _micro_batch(self, micro: int, seq_len: int, lay: Layout):
        """This rank's share of the next `micro` sequences per data-parallel rank, on its device (the
        ranks of a tensor-parallel group read the same)."""
        ranks = lay.data_parallel
        x, y = self.data.next_batch(micro * ranks, seq_len, lay.data_rank(self.world), ranks)
        device = self.world.device
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def _report(self, stage: Stage, step: int, loss: float, lr: float, grad_norm: float, rate: float, logs: bool):
        """A step's numbers: to the metrics, the progress bar and (when `logs`) the log."""
        training = stage.training
        extra = {}
        if self.peak_flops:  # model FLOPs utilisation of every device
            extra["mfu"] = rate * stage.flops_per_token / (self.peak_flops * self.world.size)
        if self.expert_load is not None:  # the busiest expert's tokens over the mean: 1 is a perfect balance
            load = self.expert_load.float()
            extra["expert_load_max"] = (load.max(dim=1).values / load.mean(dim=1).clamp(min=1e-9)).max().item()
        if self.progress:
            self.progress.update(stage.index, step, stage.steps, step * training.tokens_per_step, loss, rate)
        if self.metrics:
            self.metrics.step(
                self.global_step,
                self.data.position,
                self.flops,
                loss=loss,
                lr=lr,
                grad_norm=grad_norm,
                tokens_per_s=rate,
                memory_gib=memory_gib(self.world.device),
                layers=stage.shape.n_layers,
                **extra,
            )
        if logs:
            mfu = f"  MFU {extra['mfu']:.2f}" if "mfu" in extra else ""
            where = f"stage {stage.index} step {step}/{stage.steps}"
            self.log(f"{where}  loss {loss:.4f}  lr {lr:.2e}  {rate:,.0f} tok/s{mfu}")

    def _validate(self, stage: Stage, step: int, micro: int, lay: Layout) -> float:
        """The validation loss now (runtime.validation), logged and recorded."""
        validation = validate(self.model, self.inputs.heldout, stage, lay, self.world, micro, self.mixed)
        self.val_flops += validation.flops
        if self.metrics:
            self.metrics.validation(
                self.global_step,
                self.data.position,
                self.flops,
                loss=validation.loss,
                val_tokens=validation.tokens,
                val_data=self.val_data,
                val_flops=self.val_flops,
                seconds=validation.seconds,
            )
        self.log(
            f"val stage {stage.index} step {step}/{stage.steps}  loss {validation.loss:.4f}  "
            f"({validation.tokens:,} held-out tokens, {validation.seconds:.1f} s)"
        )
        return validation.loss

    def _evaluate(self, stage: Stage, step: int) -> None:
        """The schedule's evaluation of the live model (every rank takes part: a sharded model's
        forward needs them all)."""
        if self.evaluator is None:
            return
        about = {
            "stage": stage.index,
            "step": step,
            "global_step": self.global_step,
            "layers": stage.shape.n_layers,
            "tokens": self.data.position,
            "flops": self.flops,
        }
        results = self.evaluator(self.model, stage, about)
        reshard(self.model)
        if self.metrics:
            self.metrics.evaluation(self.global_step, self.data.position, self.flops, results)

    # ---- checkpoints -----------------------------------------------------------------------

    def _save(self, stage: int, phase: Phase, step: int, checks: list[str]) -> None:
        """A checkpoint of where the run stands (see checkpoint.Progress), if the run keeps them."""
        if self.checkpoint_dir is None:
            return
        bad = non_finite(self.model)
        if self.world.mean(float(bad is not None)) > 0:  # every rank checks its own shards
            raise Diverged(
                f"stage {stage} step {step}: the weights are not finite ({bad or 'on another process'}), so no "
                f"checkpoint is written: lower the LR and resume from the last checkpoint"
            )
        self.saves += 1
        data = self.data.state()
        progress = checkpoint.Progress(
            seq=self.saves,
            stage=stage,
            phase=phase,
            step=step,
            position=self.data.position,
            positions=data.positions,
            drawn=data.drawn,
            global_step=self.global_step,
            flops=self.flops,
            val_flops=self.val_flops,
            plan_prefix=[stage_record(s) for s in self.plan.stages[: stage + 1]],
            ramps=[r.describe() for r in self.ramps],
            growth_checks=list(checks),
            start=resume.start_record(self.plan),
        )
        # AdamW state by parameter name: the stage's optimizer's, or between stages what the next starts from
        state = named_state(self.opt_names, self.opt) if self.opt is not None else self.state
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process.*")
            checkpoint.save(self.checkpoint_dir, self.model, state, progress, self.world)

    def _restore(self) -> ResumePoint | None:
        """Load the newest good checkpoint, checked against the schedule; where training goes on,
        or None when there is no checkpoint yet."""
        folder = self.checkpoint_dir
        found = None if folder is None else resume.newest_checkpoint(folder, self.world, self.log)
        if found is None:
            self.log("no checkpoint to resume from yet: the run starts from its first step")
            return None
        path, p = found
        problem = resume.schedule_problem(self.plan, p, path.name)
        if problem:
            raise RunError(problem)
        stage = self.plan.stages[p.stage]
        self.shape = stage.shape
        try:
            self._build(stage, lambda m: [Ramp.restore(m, r) for r in p.ramps])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*single process.*")
                self.state = checkpoint.load(path, self.model, p)
        except (checkpoint.CheckpointError, ValueError) as e:
            raise RunError(f"cannot resume from {path.name}: {e}") from None
        self.data.reweight(list(self.sources.weights[p.stage]))
        self.data.restore(resume.data_state(p, len(self.sources.folders), path.name))
        self.saves, self.global_step, self.flops, self.val_flops = p.seq, p.global_step, p.flops, p.val_flops
        self.log(
            f"resumed from {path.name}: stage {p.stage} {'done' if p.phase == 'end' else f'step {p.step}'}, "
            f"token {p.position:,}"
        )
        step = stage.steps if p.phase == "end" else p.step
        self.owed = EvaluationPoint(stage, step) if evaluation_point(self.plan, stage, step) else None
        return ResumePoint.after(p)
