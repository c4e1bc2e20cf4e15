"""One process or many: the process group, the device (one GPU per process, or the CPU), and
torchtitan's parallelize_llama (FSDP2, tensor parallel, activation checkpointing, per-block
compile, bf16 mixed precision) applied to a built model.

Every rank builds and initialises the whole model the same way (seeded), then parallelize_llama
keeps each rank's shard: a run on N ranks starts from exactly the weights of a 1-rank run. On CPU
(gloo) two things torchtitan 0.2.2 assumes about GPUs are set right: its modules' `device_type`,
and FSDP's reductions (gloo has no PREMUL_SUM: sums are forced, and then FSDP hands back the sum
of the ranks' gradients unless told the divide factor, which Adam's scale invariance all but hides)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from growdsl.plan.plan import TrainingConfig


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


def from_environment() -> World:
    """The world torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), with its process group; else one
    process."""
    size, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if size == 1:
        return World(local_rank=local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local)


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
            module.device_type = "cpu"


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
    p = training.parallel
    if world.size == 1 and p.activation_checkpoint == "none" and not p.compile:
        return model
    from torchtitan.config import JobConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.models.llama3 import parallelize_llama

    if not torch.cuda.is_available():
        _torchtitan_on_cpu()
    shard = p.dp_shard or world.size // (p.dp_replicate * p.tp)
    if p.dp_replicate * shard * p.tp != world.size:
        raise ValueError(
            f"dp_replicate {p.dp_replicate} x dp_shard {shard} x tp {p.tp} is not the "
            f"{world.size} processes of this run"
        )
    dims = ParallelDims(
        dp_replicate=p.dp_replicate, dp_shard=shard, cp=1, tp=p.tp, pp=1, ep=1, etp=1, world_size=world.size
    )
    if world.size > 1:
        dims.build_mesh()
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
    job.activation_checkpoint.mode = p.activation_checkpoint
    job.compile.enable = p.compile
    job.compile.components = ["model"] if p.compile else []
    model = parallelize_llama(model, dims, job)
    if not on_gpu:
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():
            if isinstance(module, FSDPModule):
                # summed, FSDP's gradients are the sum over data-parallel ranks: divide to the mean
                module.set_force_sum_reduction_for_comms(True)
                module.set_gradient_divide_factor(float(p.dp_replicate * shard))
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 wraps the model (then FSDP, not autocast, handles mixed precision)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())
