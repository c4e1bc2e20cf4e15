"""One process or many: the process group, the device (one GPU per process, or the CPU), and
torchtitan's parallelize_llama (FSDP2, tensor parallel, activation checkpointing, per-block
compile, bf16 mixed precision) applied to a built model.

A model is laid out on the meta device and given its weights shard by shard afterwards
(growdsl.runtime.building): a run on N ranks starts from exactly the weights of a 1-rank run. On CPU
(gloo) torchtitan 0.2.2's modules' `device_type` is set right, and gloo (no PREMUL_SUM) is told to sum.

Gradients are a mean over the data-parallel ranks everywhere: torchtitan's apply_fsdp sets every
divide factor to 1 (its own loss is a sum over the global token count), growdsl's loss is a mean
per rank, so the factor is set back to the data-parallel degree, on GPUs as on CPUs (without it the
gradients are N times too large and `clip 1` acts as 1/N; Adam's scale invariance all but hides it).

A stage's layout (its dp_replicate x dp_shard x tp degrees) is a mesh built once per run and
reused by every stage, growth and resume that lays a model out that way: torch makes new process
groups for every mesh it builds, and they are freed only when the run ends (`close`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from growdsl.plan.plan import Stage, TrainingConfig


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # which GPU of its machine this process drives

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This process's GPU, or the CPU on a machine without one."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def mean(self, value: float) -> float:
        """The mean of a number over all ranks."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)  # nccl reduces GPU tensors only
        dist.all_reduce(t)
        return float(t) / self.size

    def share(self, value):
        """Rank 0's value, on every rank (any picklable value)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def first_failure(self, problem: str | None) -> str | None:
        """The first rank's problem, if any rank has one, on every rank ("rank K: ..." when it is
        not rank 0's). Every rank calls it at the same point: a failure on one rank then ends them
        all together, each with the same line, instead of leaving the others waiting in a
        collective the failed rank never reaches."""
        if self.size == 1:
            return problem
        every: list[str | None] = [None] * self.size
        dist.all_gather_object(every, problem)
        for rank, found in enumerate(every):
            if found is not None:
                return found if rank == 0 else f"rank {rank}: {found}"
        return None


# How long a collective may wait for the slowest rank before every rank stops with an error (`growdsl run
# --timeout`). Generous: rank 0 alone verifies a checkpoint's files (SHA-256) before a resume.
DEFAULT_TIMEOUT = timedelta(minutes=30)


def from_environment(timeout: timedelta = DEFAULT_TIMEOUT) -> World:
    """The world torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), with its process group; else one
    process."""
    size, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if size == 1:
        return World(local_rank=local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    return World(dist.get_rank(), dist.get_world_size(), local)


# What gloo and NCCL say when a collective's peer has gone (killed, crashed, its node lost) or never came.
_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "timed out", "Timeout", "NCCL")


def lost_peer(error: BaseException) -> str | None:
    """A collective that failed because another process stopped, in one line; None for any other error."""
    text = str(error)
    if not isinstance(error, dist.DistError) and not any(mark in text for mark in _LOST):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    first = first.split("] ", 1)[-1].split(". ")[0]  # after gloo's source location, its first sentence
    return f"a collective failed ({first[:160]}): another process stopped or cannot be reached"


def close() -> None:
    """Free the process groups (every mesh's too); a no-op on one process."""
    _meshes.clear()
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Layout:
    """How a stage's model lies over the ranks: dp_replicate x dp_shard x tp = the world.
    Ranks are laid out with tp innermost (torchtitan's mesh order): the tp ranks of one group are
    neighbours, see the same data and hold one model between them."""

    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1

    @property
    def data_parallel(self) -> int:
        """How many different slices of each batch the ranks read."""
        return self.dp_replicate * self.dp_shard

    def data_rank(self, world: World) -> int:
        """Which slice of the batch this rank reads (the same for every rank of a tp group)."""
        return world.rank // self.tp

    def describe(self) -> str:
        return f"dp_replicate {self.dp_replicate} x dp_shard {self.dp_shard} x tp {self.tp}"


def layout(parallel, world: World) -> Layout:
    """The stage's degrees resolved against the world (`dp_shard` unset: every rank left). One
    process trains any schedule unsharded; on several, degrees that are not the world are refused."""
    if world.size == 1:
        return Layout()
    p = parallel
    shard = p.dp_shard or world.size // (p.dp_replicate * p.tp)
    if p.dp_replicate * shard * p.tp != world.size:
        raise ValueError(
            f"dp_replicate {p.dp_replicate} x dp_shard {p.dp_shard or shard} x tp {p.tp} is not the "
            f"{world.size} processes of this run: set the degrees so that they multiply to {world.size}, "
            f"or start as many processes as they multiply to"
        )
    return Layout(p.dp_replicate, shard, p.tp)


# torch.compile's backend for `compile on` (tests set "eager": the wrapping without inductor's minutes)
COMPILE_BACKEND = "inductor"


def stage_layout(stage: Stage, world: World) -> Layout:
    """A stage's layout, checked: its degrees are the world and its batch splits over the data-parallel
    ranks (ValueError naming the stage otherwise)."""
    training = stage.training
    where = f"stage {stage.index} (line {stage.line})"
    try:
        lay = layout(training.parallel, world)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if training.batch_seqs % lay.data_parallel:
        raise ValueError(
            f"{where}: a batch of {training.batch_seqs} sequences does not split over {lay.data_parallel} "
            f"data-parallel ranks ({lay.describe()})"
        )
    if lay.tp > 1 and lay.dp_replicate > 1 and lay.dp_shard == 1:
        raise ValueError(
            f"{where}: dp_replicate {lay.dp_replicate} with tp {lay.tp} and no dp_shard is DDP over a tensor-parallel "
            f"model, which torchtitan 0.2.2 does not do: shard the replicas (dp_shard 2 or more: HSDP)"
        )
    if stage.shape.tied_embeddings and (lay.dp_shard > 1 or lay.tp > 1):
        raise ValueError(
            f"{where}: a model with tied embeddings cannot be sharded ({lay.describe()}): torchtitan 0.2.2 shards "
            f"the embedding and the head apart, which one shared table cannot be; train it with dp_replicate "
            f"{world.size} (whole replicas), or untie it"
        )
    local = training.batch_seqs // lay.data_parallel
    if training.micro_batch and local % training.micro_batch:
        raise ValueError(
            f"{where}: micro_batch {training.micro_batch} does not divide the {local} sequences each data-parallel "
            f"rank takes per step ({lay.describe()})"
        )
    return lay


_meshes: dict[Layout, object] = {}  # a layout's torchtitan ParallelDims, its mesh built once


def parallel_dims(lay: Layout, world: World):
    """torchtitan's ParallelDims for a layout, its mesh built the first time it is asked for."""
    from torchtitan.distributed import ParallelDims

    if not torch.cuda.is_available():
        _torchtitan_on_cpu()
    if lay not in _meshes:
        degrees = dict(dp_replicate=lay.dp_replicate, dp_shard=lay.dp_shard, tp=lay.tp)
        dims = ParallelDims(**degrees, cp=1, pp=1, ep=1, etp=1, world_size=world.size)
        if world.size > 1:
            dims.build_mesh()
        _meshes[lay] = dims
    return _meshes[lay]


def free_memory_bytes(device: torch.device = torch.device("cpu")) -> int:
    """Memory this process can still take: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # unknown: do not refuse


def _torchtitan_on_cpu() -> None:
    for name, module in list(sys.modules.items()):
        if name.startswith("torchtitan") and getattr(module, "device_type", None) == "cuda":
            module.device_type = "cpu"  # type: ignore[attr-defined]  # a module of torchtitan that has one


def parallelize(
    model: nn.Module,
    training: TrainingConfig,
    seq_len: int,
    world: World,
    dtype: torch.dtype = torch.float32,
    mixed: bool = False,
) -> nn.Module:
    """Apply the stage's parallelism with torchtitan's parallelize_llama (a no-op for one process
    without activation checkpointing or compile). `mixed`: FSDP computes in bf16 and reduces in
    float32 (torchtitan's default on GPUs); else everything stays in `dtype`."""
    parallel = training.parallel
    lay = layout(parallel, world)
    if world.size == 1 and parallel.activation_checkpoint == "none" and not parallel.compile:
        return model
    from torchtitan.config import JobConfig
    from torchtitan.models.llama3 import parallelize_llama

    dims = parallel_dims(lay, world)
    job = JobConfig()
    job.training.seq_len = seq_len
    on_gpu = torch.cuda.is_available()
    if mixed:
        job.training.mixed_precision_param, job.training.mixed_precision_reduce = "bfloat16", "float32"
    else:  # compute and reduce in the model's own dtype (float64 for exactness tests: not in torchtitan's map)
        from torchtitan.config import TORCH_DTYPE_MAP

        name = str(dtype).removeprefix("torch.")
        TORCH_DTYPE_MAP.setdefault(name, dtype)
        job.training.mixed_precision_param = job.training.mixed_precision_reduce = name
    job.activation_checkpoint.mode = parallel.activation_checkpoint
    job.compile.enable = parallel.compile
    job.compile.backend = COMPILE_BACKEND
    job.compile.components = ["model"] if parallel.compile else []
    model = parallelize_llama(model, dims, job)
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            if not on_gpu:
                module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
            # torchtitan sets 1 (its loss is a global sum); ours is a per-rank mean: average the ranks
            module.set_gradient_divide_factor(float(lay.data_parallel))
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 wraps the model (then FSDP, not autocast, handles mixed precision)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())
