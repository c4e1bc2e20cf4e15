"""What a run reads and checks before it builds anything: its data, the layout of every stage, the
tokenizer of a model it starts from, the vocab, the memory and the validation split.

Each rank checks what it sees (a node's copy of the data may differ), and every rank agrees on the
first problem before the first collective: a problem on one rank stops them all, with its line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from growdsl.errors import RunError
from growdsl.plan.data import RunData, folder_uses, vocab_problem
from growdsl.plan.plan import Plan, Start
from growdsl.records.data_folder import DataError, DataMeta, read_meta, train_files
from growdsl.runtime.building import ModelBuilder
from growdsl.runtime.distributed import Layout, World, free_memory_bytes, stage_layout
from growdsl.runtime.mixture import Mixture
from growdsl.runtime.stream import HeldOut, TokenStream

Say = Callable[[str], None]
PROBE_SEQUENCES = 4  # held-out sequences every growth's preservation check runs on


@dataclass
class RunInputs:
    meta: DataMeta  # of the first data folder, which gives validation, the probe and the tokenizer
    layouts: list[Layout]  # each stage's
    data: Mixture  # the training stream over every folder, at its first token
    heldout: HeldOut
    probe: torch.Tensor  # a held-out batch every growth is checked on, on the device


def read_inputs(plan: Plan, sources: RunData, world: World, builder: ModelBuilder, log: Say) -> RunInputs:
    """Every rank's inputs, checked; a RunError with the first rank's problem on every rank."""
    problem = inputs = None
    try:
        inputs = _read(plan, sources, world, builder, log)
    except RunError as e:
        problem = str(e)
    except OSError as e:  # a node's copy of the data that cannot be read
        problem = f"cannot read {e.filename or 'a file'}: {e.strerror}"
    problem = world.first_failure(problem)
    if problem or inputs is None:
        raise RunError(problem or "the run's inputs could not be read")
    return inputs


def _read(plan: Plan, sources: RunData, world: World, builder: ModelBuilder, log: Say) -> RunInputs:
    try:
        metas = [read_meta(folder) for folder in sources.folders]
        uses = folder_uses(plan, sources)  # every folder of one tokenizer
    except DataError as e:
        raise RunError(str(e)) from None
    first_folder, meta = sources.folders[0], metas[0]
    layouts = _layouts(plan, world, log)
    if plan.start:
        _check_start_tokenizer(plan.start, first_folder, log)
    problem = vocab_problem(plan, meta.vocab_size)  # the model's vocab and the tokenizer's agree, both ways
    if problem:
        raise RunError(problem)
    _check_memory(plan, layouts, builder)
    streams = [TokenStream(train_files(f, m), m.dtype) for f, m in zip(sources.folders, metas)]
    for read in uses:
        if read.epochs > 1:
            log(
                f"note: the run reads {read.epochs:.1f} times the {read.meta.train_tokens:,} tokens of "
                f"{read.directory}: it repeats its data"
            )
    first = plan.stages[0].training
    probe = TokenStream(first_folder / "val.bin", meta.dtype)
    probe_batch = probe.next_batch(min(PROBE_SEQUENCES, first.batch_seqs), first.seq_len)[0].to(world.device)
    heldout = HeldOut(first_folder / "val.bin", meta.dtype)
    _check_validation(plan, layouts, heldout, log)
    return RunInputs(meta, layouts, Mixture(streams, list(sources.weights[0])), heldout, probe_batch)


def _layouts(plan: Plan, world: World, log: Say) -> list[Layout]:
    """Every stage's layout over the processes: its degrees are the world, and its batch splits over
    the data-parallel ranks."""
    try:
        layouts = [stage_layout(stage, world) for stage in plan.stages]
    except ValueError as e:
        raise RunError(str(e)) from None
    sharded = [s.training.parallel for s in plan.stages if s.training.parallel.processes_named > 1]
    if world.size == 1 and sharded:
        p = sharded[0]
        log(
            f"note: one process trains the schedule unsharded (tp {p.tp}, dp_replicate {p.dp_replicate}, "
            f"dp_shard {p.dp_shard or 'auto'} take effect under torchrun with that many processes)"
        )
    return layouts


def _check_start_tokenizer(start: Start, data: Path, log: Say) -> None:
    """The data is tokenized as the model it starts from was trained: the same token for every id."""
    from growdsl.data.tokenizer import TokenizerError, load

    folder = Path(start.tokenizer_folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        log(f"note: {folder} has no tokenizer: the data's ({data}) is taken to be the model's")
        return
    try:
        theirs = load(folder).tokenizer.get_vocab()
        ours = load(data / "tokenizer.json").tokenizer.get_vocab()
    except TokenizerError as e:
        raise RunError(str(e)) from None
    if theirs != ours:
        raise RunError(
            f"the data {data} is tokenized by another tokenizer than the model it starts from ({folder}): "
            f"prepare it with --tokenizer {folder}"
        )


def _check_memory(plan: Plan, layouts: list[Layout], builder: ModelBuilder) -> None:
    """Refuse up front a run that cannot fit, rather than be killed in it: for every stage, what
    this rank holds at the peak of a step under the stage's layout (its shards of weights,
    gradients and AdamW moments, the activations of a micro-batch) and at every growth (the old
    model's shards and state beside the new model's), by growdsl.runtime.fit's closed form
    (`growdsl fit` measures it on the real sharding)."""
    from growdsl.runtime.fit import growth_peak, peak

    scale = max(1, torch.finfo(builder.dtype).bits // 32)  # the formula counts float32 weights (2: float64)
    free = free_memory_bytes(builder.device)
    before: tuple[int, Layout] | None = (plan.start.shape.params, layouts[0]) if plan.start else None
    for stage, lay in zip(plan.stages, layouts):
        need, steady = peak(stage, lay, builder.mixed(stage), scale)
        what = f"stage {stage.index} (line {stage.line})"
        if stage.growths and before is not None:
            grown = growth_peak(*before, stage, lay, scale)
            if grown > need:
                need, what = grown, f"the growth on line {stage.growths[0].line}"
        before = (stage.params, lay)
        if need > free:
            where = "on this GPU" if builder.device.type == "cuda" else "in RAM"
            raise RunError(
                f"{what} needs about {need / 2**30:.1f} GiB a process ({steady / 2**30:.1f} GiB of weights, "
                f"gradients and AdamW state, the rest activations and, at a growth, the new model); "
                f"{free / 2**30:.1f} GiB is free {where}: set a smaller micro_batch or `ac full`, or run it on "
                f"more GPUs with torchrun (growdsl fit FILE --gpus N --memory GIB shows what fits)"
            )


def _check_validation(plan: Plan, layouts: list[Layout], heldout: HeldOut, log: Say) -> None:
    """Every stage that validates gets at least one held-out sequence per data-parallel rank; a
    stage that gets fewer than it asks for (a small split, or a count rounded down to the ranks)
    is said so, once."""
    noted = False
    for stage in plan.stages:
        training, ranks = stage.training, layouts[stage.index].data_parallel
        if not training.val_every_steps:
            continue
        have, size = heldout.count(training.val_tokens, training.seq_len, ranks), len(heldout.tokens)
        if have == 0:
            raise RunError(
                f"stage {stage.index} (line {stage.line}) validates on {training.seq_len}-token sequences, one per "
                f"data-parallel rank at least, but the held-out split holds {size:,} tokens: prepare the data "
                f"with a larger --holdout, or set `val off`"
            )
        if have < training.val_tokens // training.seq_len and not noted:
            why = (
                f"the held-out split holds {size:,} tokens"
                if have * training.seq_len + training.seq_len >= size
                else f"a whole number of sequences for each of {ranks} data-parallel ranks"
            )
            log(
                f"validation: stage {stage.index} validates on {have * training.seq_len:,} of the "
                f"{training.val_tokens:,} tokens asked for: {why}"
            )
            noted = True
