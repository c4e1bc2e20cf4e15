"""Train a plan from the first token to the end, growing the live model in memory at every stage
boundary, on one process or many (torchrun: FSDP2 / TP / AC / compile via torchtitan).

At a growth: build the target model (torchtitan's Transformer, meta -> init), let the growth's
operator (growdsl.ops.operators, whichever it is) attach its ramps and write the grown weights, run
the preservation check on a held-out probe batch and log it, train the operator's learned map first
if it has one (LiGO), and start the target's AdamW from reset or the operator's carried state.
The data goes on where the base stopped: one prepared folder read front to back, or a mixture of
several (growdsl.runtime.mixture), reweighted as each stage begins.

With a run directory it checkpoints at every stage end (before a growth), right after every growth,
and at the plan's cadence; `resume=True` goes on from the newest complete checkpoint, never
re-applying or skipping a growth, and refuses a schedule changed before that point."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from growdsl.errors import GrowdslError
from growdsl.ops import operators
from growdsl.ops.check import check_preservation, non_finite
from growdsl.ops.layout import full, named_parameters, reshard, state_dict, write_full
from growdsl.ops.model import build_model, materialize, meta_model
from growdsl.ops.optimizer import State, load_named_state, named_state, parameter_names
from growdsl.ops.ramp import Ramp
from growdsl.plan.data import RunData, reading, vocab_problem
from growdsl.plan.imported import ModelFolderError
from growdsl.plan.plan import (
    DepthGrowth,
    Growth,
    Plan,
    Stage,
    Start,
    stage_from_record,
    stage_record,
    validation_steps,
    with_fields_since,
)
from growdsl.plan.render import growth_line
from growdsl.runtime import checkpoint
from growdsl.runtime.data import DataError, HeldOut, Meta, TokenStream, load_meta, train_files
from growdsl.runtime.distributed import Layout, World, free_memory_bytes, is_sharded, parallelize, stage_layout
from growdsl.runtime.metrics import Metrics, memory_gib, peak_flops
from growdsl.runtime.mixture import Mixture, MixtureState
from growdsl.runtime.pretrained import load_start


class RunError(GrowdslError):
    """A run cannot go on; the message says why and what to do."""


@dataclass
class StageLog:
    index: int
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # before clipping, over every rank's gradients
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (global step, validation loss)
    growth_checks: list[str] = field(default_factory=list)
    data_position_at_start: int = 0
    seconds: float = 0.0


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
    ):
        self.plan, self.log_every, self.world, self.dtype = plan, log_every, world, dtype
        self.sources = data if isinstance(data, RunData) else RunData.single(data, len(plan.stages))
        # validation, the growth probe and the tokenizer come from the first folder
        self.data_dir = self.sources.folders[0]
        self.device = world.device
        # bf16 compute over float32 weights: each stage's `mixed` (auto: on GPUs, as torchtitan), or this
        self.mixed_precision = mixed_precision
        self.mixed = self._mixed(plan.stages[0])  # the model's as laid out
        self.peak_flops = peak_flops(self.device)  # per device, for MFU; None on a CPU
        self.log = log if world.main else (lambda line: None)
        self.checkpoint_dir, self.resume, self.metrics = checkpoint_dir, resume, metrics
        # the schedule's evaluations (growdsl.eval.in_run), at its eval points
        self.evaluator = evaluator
        self.progress = progress if world.main else None  # a StageProgress, on a terminal
        self.saves = 0
        self.global_step = 0  # optimizer steps over all stages
        self.flops = 0  # training FLOPs spent so far, LiGO phases included
        self.val_flops = 0  # forward FLOPs of the validation loss, counted apart
        # What this rank can check alone comes first, agreed by every rank before the first collective
        # (laying the model out): a problem on one rank then stops them all, with its line.
        problem = None
        try:
            self._check_locally()
        except RunError as e:
            problem = str(e)
        except OSError as e:  # a node's copy of the data that cannot be read
            problem = f"cannot read {e.filename or 'a file'}: {e.strerror}"
        problem = world.first_failure(problem)
        if problem:
            raise RunError(problem)
        first = plan.stages[0].training
        torch.manual_seed(first.seed)
        self.shape = plan.start.shape if plan.start else plan.stages[0].shape  # stage 0's growths come in `run`
        self.ramps: list[Ramp] = []
        self.model = self._fresh(plan.stages[0])  # a model it starts from: loaded by `start`
        self.state: State = {}  # AdamW state by parameter name between stages (in a stage: self.opt's)
        self.opt: torch.optim.Optimizer | None = None  # the stage's optimizer while it trains
        self.opt_names: dict[int, str] = {}  # its parameters' names
        self.started: tuple[int, int, list[str], bool] | None = None  # see `start`
        self.owed: tuple[Stage, int] | None = None  # the resumed checkpoint's evaluation point, if it is one

    def _check_locally(self) -> None:
        """The data, the layouts, the tokenizer of a model it starts from, the vocab, the memory and the
        validation split, as this rank sees them; the data streams, probe and held-out split it reads."""
        plan = self.plan
        try:
            metas = [load_meta(folder) for folder in self.sources.folders]
            readings = reading(plan, self.sources)  # every folder of one tokenizer
        except DataError as e:
            raise RunError(str(e)) from None
        self.meta: Meta = metas[0]
        self.layouts = self._check_layouts()
        if plan.start:
            self._check_start_tokenizer(plan.start)
        self._check_vocab()
        self._check_memory()
        streams = [TokenStream(train_files(f, m), m.dtype) for f, m in zip(self.sources.folders, metas)]
        self.data = Mixture(streams, list(self.sources.weights[0]))
        for read in readings:
            if read.epochs > 1:
                self.log(
                    f"note: the run reads {read.epochs:.1f} times the {read.meta['train_tokens']:,} tokens of "
                    f"{read.directory}: it repeats its data"
                )
        self.max_seq = max(s.training.seq_len for s in plan.stages)
        first = plan.stages[0].training
        probe = TokenStream(self.data_dir / "val.bin", self.meta.dtype)
        self.probe = probe.next_batch(min(4, first.batch_seqs), first.seq_len)[0].to(self.device)
        self.heldout = HeldOut(self.data_dir / "val.bin", self.meta.dtype)
        self.val_data = self.heldout.digest()
        self._check_validation()

    def _check_start_tokenizer(self, start: Start) -> None:
        """The data is tokenized as the model it starts from was trained: the same token for every id."""
        from growdsl.runtime.tokenizer import TokenizerError, load

        folder = Path(start.tokenizer_folder)
        if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
            self.log(f"note: {folder} has no tokenizer: the data's ({self.data_dir}) is taken to be the model's")
            return
        try:
            theirs = load(folder).tokenizer.get_vocab()
            ours = load(self.data_dir / "tokenizer.json").tokenizer.get_vocab()
        except TokenizerError as e:
            raise RunError(str(e)) from None
        if theirs != ours:
            raise RunError(
                f"the data {self.data_dir} is tokenized by another tokenizer than the model it starts from "
                f"({folder}): prepare it with --tokenizer {folder}"
            )

    def _check_layouts(self) -> list[Layout]:
        """Every stage's layout over the processes, checked before anything is built: its degrees
        are the world, and its batch splits over the data-parallel ranks."""
        try:
            layouts = [stage_layout(stage, self.world) for stage in self.plan.stages]
        except ValueError as e:
            raise RunError(str(e)) from None
        p = next((s.training.parallel for s in self.plan.stages if _degrees(s) != (1, 1)), None)
        if self.world.size == 1 and p is not None:
            self.log(
                f"note: one process trains the schedule unsharded (tp {p.tp}, dp_replicate {p.dp_replicate}, "
                f"dp_shard {p.dp_shard or 'auto'} take effect under torchrun with that many processes)"
            )
        return layouts

    def _check_vocab(self) -> None:
        """The model's vocab and the tokenizer's agree, both ways (growdsl.plan.data.vocab_problem)."""
        problem = vocab_problem(self.plan, self.meta.vocab_size)
        if problem:
            raise RunError(problem)

    def _check_memory(self) -> None:
        """Refuse up front a run that cannot fit, rather than be killed in it: for every stage, what
        this rank holds at the peak of a step under the stage's layout (its shards of weights,
        gradients and AdamW moments, the activations of a micro-batch) and at every growth (the old
        model's shards and state beside the new model's), by growdsl.runtime.fit's closed
        form (`growdsl fit` measures it on the real sharding)."""
        from growdsl.runtime.fit import growth_peak, peak

        scale = max(1, torch.finfo(self.dtype).bits // 32)  # the formula counts float32 weights (2: float64)
        free = free_memory_bytes(self.device)
        start = self.plan.start
        before: tuple[int, Layout] | None = (start.shape.params, self.layouts[0]) if start else None
        for stage, lay in zip(self.plan.stages, self.layouts):
            need, steady = peak(stage, lay, self._mixed(stage), scale)
            what = f"stage {stage.index} (line {stage.line})"
            if stage.growths and before is not None:
                grown = growth_peak(*before, stage, lay, scale)
                if grown > need:
                    need, what = grown, f"the growth on line {stage.growths[0].line}"
            before = (stage.params, lay)
            if need > free:
                where = "on this GPU" if self.device.type == "cuda" else "in RAM"
                raise RunError(
                    f"{what} needs about {need / 2**30:.1f} GiB a process ({steady / 2**30:.1f} GiB of weights, "
                    f"gradients and AdamW state, the rest activations and, at a growth, the new model); "
                    f"{free / 2**30:.1f} GiB is free {where}: set a smaller micro_batch or `ac full`, or run it on "
                    f"more GPUs with torchrun (growdsl fit FILE --gpus N --memory GIB shows what fits)"
                )

    def _check_validation(self) -> None:
        """Every stage that validates gets at least one held-out sequence per data-parallel rank; a
        stage that gets fewer than it asks for (a small split, or a count rounded down to the ranks)
        is said so, once."""
        noted = False
        for stage in self.plan.stages:
            t, ranks = stage.training, self.layouts[stage.index].data_parallel
            if not t.val_every_steps:
                continue
            have, size = self.heldout.count(t.val_tokens, t.seq_len, ranks), len(self.heldout.tokens)
            if have == 0:
                raise RunError(
                    f"stage {stage.index} (line {stage.line}) validates on {t.seq_len}-token sequences, one per "
                    f"data-parallel rank at least, but the held-out split holds {size:,} tokens: prepare the data "
                    f"with a larger --holdout, or set `val off`"
                )
            if have < t.val_tokens // t.seq_len and not noted:
                why = (
                    f"the held-out split holds {size:,} tokens"
                    if have * t.seq_len + t.seq_len >= size
                    else f"a whole number of sequences for each of {ranks} data-parallel ranks"
                )
                self.log(
                    f"validation: stage {stage.index} validates on {have * t.seq_len:,} of the {t.val_tokens:,} "
                    f"tokens asked for: {why}"
                )
                noted = True

    def start(self) -> None:
        """Where training starts: the first step, or (resuming) the newest good checkpoint, loaded and
        checked against the schedule. Separate from `run` so that a caller can refuse before anything
        is written; `run` calls it if the caller did not."""
        self.started = self._restore() if self.resume else None
        if self.started is None:  # from the first step: from the model the schedule starts from, if any
            self.started = (0, 0, [], False)
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
        first, start_step, checks, grown = self.started
        if self.owed and self.evaluator is not None and not self.evaluator.written(*self.owed):
            # committed, then stopped before its evaluation was written: the run still owes it
            stage, step = self.owed
            self.log(f"stage {stage.index} step {step}: its evaluation was never written: evaluating now")
            self._evaluate(stage, step)
        logs = []
        for stage in self.plan.stages[first:]:
            resumed_here = grown and stage.index == first  # its growths are in the checkpoint already
            log = StageLog(stage.index, growth_checks=list(checks) if resumed_here else [])
            if not resumed_here:
                self.data.reweight(list(self.sources.weights[stage.index]))  # the stage's mixture, counted afresh
                for growth in stage.growths:
                    log.growth_checks.append(self._grow(growth, stage))
                if stage.growths:
                    self._save(stage.index, "start", 0, log.growth_checks)
                elif stage.index and stage.training.parallel != self.plan.stages[stage.index - 1].training.parallel:
                    self._reparallelize(stage)
            log.data_position_at_start = self.data.position
            begin = time.perf_counter()
            self._train(stage, log, start_step if stage.index == first else 0)
            log.seconds = time.perf_counter() - begin
            self._save(stage.index, "end", stage.steps, log.growth_checks)
            if self._evaluates_after(stage):
                self._evaluate(stage, stage.steps)
            logs.append(log)
        return logs

    def _fresh(self, stage: Stage, ramps: Callable[[torch.nn.Module], list[Ramp]] | None = None) -> torch.nn.Module:
        """A freshly initialised model of the current shape, laid out as `stage` trains it, and its
        ramps (`ramps(model)` puts them on; none by default). Built as torchtitan builds: on the meta
        device, laid out, then given storage and its initial weights block by block, so that no rank
        ever holds the whole model (a 7B one is 28 GB in float32) and every layout starts from the
        weights one process draws."""
        model = meta_model(self.shape, self.max_seq, self.dtype)
        self.ramps = ramps(model) if ramps else []
        model = self._parallel(model, stage)
        materialize(model, self.shape, self.max_seq, dtype=self.dtype, device=self.device)
        for ramp in self.ramps:  # the masks are buffers, and the storage just given holds garbage
            ramp.write_mask()
        return model

    def _mixed(self, stage: Stage) -> bool:
        """Whether the stage computes in bf16 over float32 weights."""
        if self.mixed_precision is not None:
            return self.mixed_precision
        setting = stage.training.parallel.mixed
        return setting == "bf16" or (setting == "auto" and self.device.type == "cuda")

    def _parallel(self, model: torch.nn.Module, stage: Stage) -> torch.nn.Module:
        self.mixed = self._mixed(stage)
        try:
            return parallelize(model, stage.training, self.max_seq, self.world, self.dtype, self.mixed)
        except ValueError as e:
            raise RunError(str(e)) from None

    def _autocast(self):
        """bf16 autocast where mixed precision is on and FSDP does not already provide it (one GPU:
        torchtitan's maybe_enable_amp does the same)."""
        if self.mixed and not is_sharded(self.model):
            return torch.autocast(self.device.type, torch.bfloat16)
        return nullcontext()

    def _reparallelize(self, stage: Stage) -> None:
        """A stage that changes its parallelism (AC, compile, degrees) without growing: the same
        weights, ramps and AdamW state, laid out again under the new settings. Tensor by tensor
        through the whole tensor, as the layouts may differ."""
        old, recorded = state_dict(self.model), [r.describe() for r in self.ramps]
        model = self._fresh(stage, lambda m: [Ramp.restore(m, r) for r in recorded])
        with torch.no_grad():
            for name, t in state_dict(model).items():
                write_full(t, full(old[name]))
        params = named_parameters(model)
        state = {}
        for name, st in self.state.items():
            state[name] = {k: v if v.dim() == 0 else _laid_out(v, params[name]) for k, v in st.items()}
        self.model, self.state = model, state
        self.log(f"stage {stage.index}: parallelism now {_describe_parallel(stage)}")

    # ---- checkpoints -------------------------------------------------------------------------

    def _save(self, stage: int, phase: str, step: int, checks: list[str]) -> None:
        if self.checkpoint_dir is None:
            return
        bad = non_finite(self.model)
        if self.world.mean(float(bad is not None)) > 0:  # every rank checks its own shards
            raise RunError(
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
            start=_start_record(self.plan),
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process.*")
            checkpoint.save(self.checkpoint_dir, self.model, self._optimizer_state(), progress, self.world)

    def _optimizer_state(self) -> State:
        """AdamW state by parameter name: the training optimizer's, named only when asked (a checkpoint),
        or between stages what the next one starts from."""
        return named_state(self.opt_names, self.opt) if self.opt is not None else self.state

    def _load_start(self, start: Start) -> None:
        """The weights of the model the schedule starts from, into the stage-0 model (laid out as it trains)."""
        with torch.random.fork_rng(devices=[]):  # a run from its first step draws what it would without it
            whole = build_model(start.shape, self.max_seq, dtype=self.dtype, device="cpu")
        try:
            load_start(start, whole, self.max_seq)
        except ModelFolderError as e:
            raise RunError(str(e)) from None
        weights = whole.state_dict()
        with torch.no_grad():
            for name, t in state_dict(self.model).items():
                if name != "freqs_cis":
                    write_full(t, weights[name].to(self.device))
        self.flops = start.flops  # what it cost, as stated or recorded

    def _restore(self) -> tuple[int, int, list[str], bool] | None:
        """Load the newest complete checkpoint; returns (first stage to run, its first step, its growth
        checks, whether its growths are already applied), or None when there is none yet."""
        directory = self.checkpoint_dir
        found = newer = None
        none_yet = directory is None or not checkpoint.committed(directory)
        if self.world.main and directory is not None and not none_yet:  # found once, by the first rank, for all
            try:
                found = checkpoint.newest_good(directory, say=self.log)
            except checkpoint.NewerCheckpoint as e:
                newer = str(e)
        none_yet, found, newer = self.world.share((none_yet, found, newer))
        if none_yet:
            self.log("no checkpoint to resume from yet: the run starts from its first step")
            return None
        if newer:
            raise RunError(newer)
        if found is None:
            raise RunError(f"every checkpoint in {directory} is damaged (see above): nothing to resume from")
        path, p = found
        if len(self.plan.stages) < len(p.plan_prefix):
            raise RunError(f"the schedule now has {len(self.plan.stages)} stages; the checkpoint is in stage {p.stage}")
        try:
            trained = [
                stage_from_record(with_fields_since(record, stage_record(stage)))
                for record, stage in zip(p.plan_prefix, self.plan.stages)
            ]
        except ValueError as e:
            raise RunError(f"{path.name} records a plan this growdsl does not read: {str(e).splitlines()[0]}") from None
        if _same_model(p.start) != _same_model(_start_record(self.plan)):
            now = self.plan.start.folder if self.plan.start else "a fresh one"
            then = (p.start or {}).get("folder", "a fresh one")
            raise RunError(
                f"the schedule starts from another model ({now}) than {path.name} grew from ({then}): name the "
                f"model the run started from (a run's checkpoint by its own folder)"
            )
        for old, new in zip(trained, self.plan.stages):
            current = old.index == p.stage
            if _trained_part(old, current) != _trained_part(new, current) or (current and new.steps < p.step):
                raise RunError(
                    f"the schedule changed in stage {old.index} (line {old.line}), which the "
                    f"checkpoint {path.name} has already trained: resume only with changes to what "
                    f"is still to come"
                )
        stage = self.plan.stages[p.stage]
        self.shape = stage.shape
        try:
            self.model = self._fresh(stage, lambda m: [Ramp.restore(m, r) for r in p.ramps])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*single process.*")
                self.state = checkpoint.load(path, self.model, p)
        except (checkpoint.CheckpointError, ValueError) as e:
            raise RunError(f"cannot resume from {path.name}: {e}") from None
        self._restore_data(path, p)
        self.saves, self.global_step, self.flops, self.val_flops = p.seq, p.global_step, p.flops, p.val_flops
        self.log(
            f"resumed from {path.name}: stage {p.stage} {'done' if p.phase == 'end' else f'step {p.step}'}, "
            f"token {p.position:,}"
        )
        self.owed = self._evaluation_at(stage, p.step if p.phase != "end" else stage.steps)
        if p.phase == "end":
            return p.stage + 1, 0, [], False
        return p.stage, p.step, p.growth_checks, True

    def _restore_data(self, path: Path, p: checkpoint.Progress) -> None:
        """Each folder's position and the mixture's count, as the checkpoint left them (one folder
        before schema 2: `position`). A folder the schedule added for stages still to come starts
        at its first token; one it dropped from them must not have been read."""
        positions, drawn = (list(p.positions), list(p.drawn)) if p.positions else ([p.position], [0])
        have = len(self.sources.folders)
        while len(positions) > have and positions[-1] == 0:
            positions.pop(), drawn.pop()
        if len(positions) > have:
            raise RunError(
                f"{path.name} read {len(positions)} data folders; the schedule now names {have}: resume with "
                f"the data it trained on"
            )
        pad = [0] * (have - len(positions))
        self.data.reweight(list(self.sources.weights[p.stage]))
        self.data.restore(MixtureState(positions + pad, drawn + pad))

    def folders_read(self) -> set[int]:
        """The data folders (by number) the run has read from so far: after `start`, what the
        checkpoint it resumes from has read."""
        return {i for i, stream in enumerate(self.data.streams) if stream.position}

    # ---- growth ----------------------------------------------------------------------------

    def _grow(self, growth: Growth, stage: Stage) -> str:
        """One growth, step by step: build the target and lay it out (with the operator's ramps), write
        its weights, check the operator's guarantee, learn its map if it has one, carry the optimizer
        state through it. Returns the check, as logged."""
        op = operators.get(growth.operator)
        target = self._build_target(growth, stage, op)
        src = state_dict(self.model)
        op.grow(src, state_dict(target), growth)
        check = self._check_growth(growth, target)
        if growth.learn is not None:
            if self.world.size > 1:
                raise RunError(
                    f"a learned growth map (`init {growth.operator}`, line {growth.line}) runs on one process for now"
                )
            self._learn(op.learner(src, growth), growth, target, stage)
        self.state = operators.grown_state(growth.optimizer, self.state, growth)
        self.model = target
        return check

    def _build_target(self, growth: Growth, stage: Stage, op: operators.GrowthOperator) -> torch.nn.Module:
        """The grown model, freshly initialised (its own init is what new units keep), with the
        operator's ramps, laid out as the stage trains it."""
        self.shape = (
            replace(self.shape, n_layers=growth.target_layers) if isinstance(growth, DepthGrowth) else growth.target
        )
        torch.manual_seed(stage.training.seed + stage.index)
        return self._fresh(stage, lambda target: op.ramps(target, growth))

    def _check_growth(self, growth: Growth, target: torch.nn.Module) -> str:
        """Base and grown model on the probe batch: logged, and a broken guarantee stops the run."""
        # rank 0's verdict for every rank: a stop taken by one rank alone would leave the others waiting
        check = self.world.share(check_preservation(self.model, target, self.probe, growth.guarantee))
        kind, shape = f"{growth.kind} {growth.operator}", self.shape.describe()
        self.log(f"growth {growth_line(growth)}")
        self.log(f"growth (line {growth.line}): {kind} -> {shape}; {check}")
        if self.metrics:
            self.metrics.growth(
                self.global_step, self.data.position, self.flops, f"line {growth.line}: {kind} -> {shape}; {check}"
            )
        if not check.ok:
            raise RunError(f"the {kind} growth on line {growth.line} broke its guarantee: {check}")
        return str(check)

    def _learn(self, learner, growth, target, stage: Stage) -> None:
        """Train the growth's map alone for its steps on the stream, then bake it into the target."""
        phase = growth.learn
        opt = torch.optim.AdamW(learner.parameters(), lr=phase.lr)
        t = stage.training
        for step in range(phase.steps):
            for group in opt.param_groups:
                group["lr"] = phase.lr * min(1.0, (step + 1) / max(1, phase.warmup_steps))
            x, y = (b.to(self.device) for b in self.data.next_batch(t.batch_seqs, t.seq_len))
            with self._autocast():
                loss = F.cross_entropy(learner(target, x).flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.flops += phase.flops
        learner.bake(state_dict(target))
        self.log(
            f"growth map (line {growth.line}) trained for {phase.steps} steps (last loss {loss.item():.4f}) "
            f"and baked in"
        )

    # ---- training --------------------------------------------------------------------------

    def _train(self, stage: Stage, log: StageLog, first_step: int = 0) -> None:
        t = stage.training
        for name, p in named_parameters(self.model).items():  # `freeze`: the rest trains
            p.requires_grad_(not stage.frozen.holds(name))
        opt = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=stage.lr.max_lr,
            betas=t.optimizer.betas,
            eps=t.optimizer.eps,
            weight_decay=t.optimizer.weight_decay,
        )
        params = named_parameters(self.model)
        state = {  # only what trains, laid out as its parameter (a carried moment may come whole)
            name: {k: v if v.dim() == 0 else _laid_out(v, params[name]) for k, v in st.items()}
            for name, st in self.state.items()
            if not stage.frozen.holds(name)
        }
        if state:
            load_named_state(self.model, opt, state)
        self.opt, self.opt_names, self.state = opt, parameter_names(self.model), {}
        lay = self.layouts[stage.index]
        local = t.batch_seqs // lay.data_parallel  # checked up front (_check_layouts)
        micro = t.micro_batch or local
        accumulate = local // micro
        self.model.train()
        start = time.perf_counter()
        every = t.checkpoint_every_steps
        first_global = self.global_step - first_step
        val_points = validation_steps(first_global, stage.steps, t.val_every_steps) if t.val_every_steps else ()
        for step in range(first_step, stage.steps):
            lr = stage.lr.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            parts = []
            for _ in range(accumulate):
                x, y = self._micro_batch(micro, t.seq_len, lay)
                with _loss_parallel(lay):
                    loss = self._loss(x, y) / accumulate
                    loss.backward()
                parts.append(full(loss.detach()))
            total = self.world.mean(torch.stack(parts).sum().item())  # one host sync a step
            where = f"stage {stage.index} step {step + 1}/{stage.steps} (token {self.data.position:,})"
            if not math.isfinite(total):
                raise RunError(f"the loss became {total} at {where}, before its update: lower the LR or check the data")
            clip = t.optimizer.grad_clip if t.optimizer.grad_clip > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            if not math.isfinite(grad_norm):
                raise RunError(f"the gradient norm became {grad_norm} at {where}, before its update: lower the LR")
            opt.step()
            opt.zero_grad(set_to_none=True)
            self._advance_ramps()
            log.losses.append(total)
            log.grad_norms.append(grad_norm)
            self.global_step += 1
            self.flops += stage.flops_per_token * t.tokens_per_step
            rate = (step + 1 - first_step) * t.tokens_per_step / (time.perf_counter() - start)
            extra = {}
            if self.peak_flops:  # model FLOPs utilisation of every device
                extra["mfu"] = rate * stage.flops_per_token / (self.peak_flops * self.world.size)
            if self.progress:
                self.progress.update(stage.index, step + 1, stage.steps, (step + 1) * t.tokens_per_step, total, rate)
            if self.metrics:
                self.metrics.step(
                    self.global_step,
                    self.data.position,
                    self.flops,
                    loss=total,
                    lr=lr,
                    grad_norm=grad_norm,
                    tokens_per_s=rate,
                    memory_gib=memory_gib(self.device),
                    layers=stage.shape.n_layers,
                    **extra,
                )
            if (step + 1) % self.log_every == 0 or step + 1 == stage.steps or step == first_step:  # the first: soon
                mfu = f"  MFU {extra['mfu']:.2f}" if extra else ""
                self.log(
                    f"stage {stage.index} step {step + 1}/{stage.steps}  loss {total:.4f}  lr {lr:.2e}  "
                    f"{rate:,.0f} tok/s{mfu}"
                )
            if self.global_step in val_points:
                log.val_losses.append((self.global_step, self._validate(stage, step + 1, micro, lay)))
            if every and (step + 1) % every == 0 and step + 1 < stage.steps:
                self._save(stage.index, "start", step + 1, log.growth_checks)
            if t.eval_every_steps and (step + 1) % t.eval_every_steps == 0 and step + 1 < stage.steps:
                self._evaluate(stage, step + 1)
        self.state, self.opt = named_state(self.opt_names, opt), None

    def _loss(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of the model on one micro-batch, on logits in the weights' precision (under
        mixed precision the model computes in bf16). A tensor-parallel head's logits stay sharded
        over the vocab: the loss is computed shard-wise (call it inside `_loss_parallel`)."""
        with self._autocast():
            logits = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1).to(self.dtype), y.flatten(), reduction=reduction)

    def _validate(self, stage: Stage, step: int, micro: int, lay: Layout) -> float:
        """The loss on the fixed held-out tokens (the stage's `val tokens`, each data-parallel rank a
        share), in micro-batches of the training's; its forward FLOPs are counted apart from training."""
        t = stage.training
        ranks = lay.data_parallel
        x, y = self.heldout.sequences(t.val_tokens, t.seq_len, ranks)
        begin, total = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=self.device)
        rank = lay.data_rank(self.world)
        mine = slice(rank * len(x) // ranks, (rank + 1) * len(x) // ranks)
        x, y = x[mine], y[mine]
        self.model.eval()
        with torch.no_grad(), _loss_parallel(lay):
            for i in range(0, len(x), micro):
                xb, yb = x[i : i + micro].to(self.device), y[i : i + micro].to(self.device)
                total += full(self._loss(xb, yb, reduction="sum")).double()
        self.model.train()
        reshard(self.model)
        tokens = len(x) * ranks * t.seq_len
        # the mean over every rank of its share's sum: each data slice counted tp times over `world` ranks
        loss = self.world.mean(total.item()) * ranks / tokens
        if not math.isfinite(loss):
            raise RunError(f"the validation loss became {loss} at stage {stage.index} step {step}: lower the LR")
        self.val_flops += tokens * stage.flops_per_token // 3  # a forward pass: a third of training's
        seconds = time.perf_counter() - begin
        if self.metrics:
            self.metrics.validation(
                self.global_step,
                self.data.position,
                self.flops,
                loss=loss,
                val_tokens=tokens,
                val_data=self.val_data,
                val_flops=self.val_flops,
                seconds=seconds,
            )
        self.log(
            f"val stage {stage.index} step {step}/{stage.steps}  loss {loss:.4f}  ({tokens:,} held-out tokens, "
            f"{seconds:.1f} s)"
        )
        return loss

    def _evaluates_after(self, stage: Stage) -> bool:
        """`eval at end` after the last stage; `eval at growth` after a stage whose successor grows."""
        if stage.index == len(self.plan.stages) - 1:
            return stage.training.eval_at_end
        return stage.training.eval_at_growth and bool(self.plan.stages[stage.index + 1].growths)

    def _evaluation_at(self, stage: Stage, step: int) -> tuple[Stage, int] | None:
        """(stage, step) where the schedule evaluates after `step` of `stage` (a checkpoint's point is
        committed first), or None."""
        if step == stage.steps:
            return (stage, step) if self._evaluates_after(stage) else None
        every = stage.training.eval_every_steps
        return (stage, step) if every and step and step % every == 0 else None

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

    def _micro_batch(self, micro: int, seq_len: int, lay: Layout):
        """This rank's share of the next `micro` sequences per data-parallel rank, on its device (the
        ranks of a tensor-parallel group read the same)."""
        ranks = lay.data_parallel
        x, y = self.data.next_batch(micro * ranks, seq_len, lay.data_rank(self.world), ranks)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _advance_ramps(self) -> None:
        """One optimizer step more on every ramp; a ramp that has ended is gone (the plain model stays)."""
        self.ramps = [r for r in self.ramps if not r.advance()]


def _start_record(plan: Plan) -> dict | None:
    """The model a plan starts from, as a checkpoint records it (its name in the schedule left out)."""
    if plan.start is None:
        return None
    record = json.loads(json.dumps(asdict(plan.start)))
    record.pop("name")
    return record


def _same_model(record: dict | None) -> dict | None:
    """What makes a start the same model: all but where it lies (a folder may move)."""
    return None if record is None else {k: v for k, v in record.items() if k != "folder"}


def _laid_out(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`value` (an optimizer moment) laid out as the parameter `like`: sharded alike, or whole. One
    laid out alike already is kept as it is (gathering every moment of a large model would not fit)."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor) == isinstance(like, DTensor) and value.shape == like.shape:
        if not isinstance(value, DTensor) or (
            isinstance(like, DTensor) and value.device_mesh == like.device_mesh and value.placements == like.placements
        ):
            return value
    out = torch.zeros_like(like)
    write_full(out, full(value))
    return out


def _loss_parallel(lay: Layout):
    """torch's loss-parallel context where the model is tensor-parallel (forward and backward)."""
    if lay.tp > 1:
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()
    return nullcontext()


def _degrees(stage: Stage) -> tuple[int, int]:
    """(tp, data-parallel degree named) of a stage: anything but (1, 1) shards the model."""
    p = stage.training.parallel
    return p.tp, p.dp_replicate * (p.dp_shard or 1)


def _describe_parallel(stage: Stage) -> str:
    p = stage.training.parallel
    return (
        f"dp_shard {p.dp_shard or 'auto'}, dp_replicate {p.dp_replicate}, tp {p.tp}, "
        f"ac {p.activation_checkpoint}, compile {'on' if p.compile else 'off'}"
    )


def _trained_part(stage: Stage, current: bool) -> object:
    """What of a stage a checkpoint has already trained: all of a finished stage but the guideline
    notes, its validation settings (validation trains nothing) and the length of an LR schedule that
    runs on into later stages; of the stage in progress, its model, growths and data."""
    if current:
        return (stage.shape, stage.growths, stage.layers, stage.training.data, stage.training.mix, stage.frozen)
    return replace(
        stage,
        timing=None,
        lr=replace(stage.lr, total_steps=0),
        training=replace(stage.training, val_every_steps=None, val_tokens=0),
    )
