"""Will a schedule fit a cluster, before renting it: every stage's memory on one GPU of N.

Measured on the real sharding, without the GPUs: one process joins a fake process group of N ranks
(collectives do nothing), builds each stage's model under FakeTensorMode (tensors with shapes and no
data), lays it out with torchtitan's parallelize_llama exactly as the run will (FSDP2, TP, AC, bf16
mixed precision), and runs one forward and backward of a micro-batch under torch's memory tracker
(FSDPMemTracker, or MemTracker for a model FSDP does not wrap). Rank 0's shard is the largest one
(FSDP pads the last), so rank 0's numbers are the ones that must fit. AdamW's two float32 moments
per trained parameter are added from the shards' real sizes.

A growth holds the old model (its shards and AdamW state) and the new one at once; while the new
model gets its initial weights a rank also holds its embedding and head tables and one block whole
(`growdsl.ops.model.materialize`): its peak is counted so.

`formula` is the closed form the run's own start-up check uses (no fake step: it must take no time),
printed next to the measurement."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from growdsl.plan.plan import Plan, Stage
from growdsl.runtime.distributed import Layout, World, parallel_dims, parallelize, stage_layout

GiB = 2**30
RESERVED_GIB = 2.0  # what CUDA's context and NCCL's buffers take of a GPU before the run does
ADAMW_BYTES = 8  # two float32 moments per trained parameter


@dataclass(frozen=True)
class Cluster:
    gpus: int
    memory: int  # bytes one GPU can give the run (its memory less what CUDA and NCCL keep)


@dataclass(frozen=True)
class Memory:
    """Bytes one rank holds at the peak of a training step (or of a growth)."""

    what: str  # "stage 1", "growth before stage 1"
    stage: Stage
    layout: Layout
    micro_batch: int
    weights: int  # this rank's shards of the float32 weights
    gradients: int  # and of their gradients (the trained ones)
    adamw: int
    activations: int  # what the forward and backward add at their peak: activations, gathered weights, temporaries
    peak: int
    formula: int  # the closed-form estimate of the peak

    @property
    def steady(self) -> int:
        return self.weights + self.gradients + self.adamw

    @property
    def growth(self) -> bool:
        return self.what.startswith("growth")


def mixed_on_gpus(stage: Stage) -> bool:
    """bf16 compute where the stage says so or leaves it to the device (auto: GPUs compute in bf16)."""
    return stage.training.parallel.mixed != "off"


def micro_batch(stage: Stage, lay: Layout) -> int:
    training = stage.training
    return training.micro_batch or training.batch_seqs // lay.data_parallel


def peak(stage: Stage, lay: Layout, mixed: bool = True, scale: int = 1) -> tuple[int, int]:
    """(peak, steady) bytes a rank holds in a step, by the closed form. Steady: weights, gradients and
    AdamW state over the ranks that shard them (FSDP: dp_shard x tp; DDP keeps whole replicas: tp).
    Activations of a Llama block, per token, what its backward keeps (`block_bytes`), over tp (tensor
    and sequence parallel); under `ac full` only each block's input, plus one block recomputed. The
    logits: in the compute dtype, their float32 copy, the loss's log-softmax and its gradient. One
    block's weights gathered. `scale` 2: float64 weights (tests)."""
    shape, t = stage.shape, stage.training
    params = stage.params
    trained = params if stage.trainable_params is None else stage.trainable_params
    steady = scale * (4 * params + (4 + ADAMW_BYTES) * trained) // (lay.dp_shard * lay.tp)
    tokens = micro_batch(stage, lay) * t.seq_len
    width = (2 if mixed else 4) * scale  # bytes of an activation: bf16, float32, float64
    blocks = [tokens * block_bytes(shape, width, scale, i) // lay.tp for i in range(shape.n_layers)]
    if t.parallel.activation_checkpoint == "full":
        layers = shape.n_layers * tokens * shape.dim * width // lay.tp + max(blocks)
    else:
        layers = sum(blocks)
    logits = tokens * shape.vocab_size * (width + 12 * scale) // lay.tp
    gathered = 4 * scale * max(shape.block_params(i) for i in range(shape.n_layers)) // lay.tp
    return steady + layers + logits + gathered, steady


def block_bytes(shape, width: int, scale: int = 1, layer: int = 0) -> int:
    """Bytes a token leaves for the backward in block `layer`, flash attention (no seq x seq scores):
    both norms' inputs and their float32 copies, the normed inputs of the projections, q, k, v after
    RoPE, the attention output, and the SwiGLU MLP's gate, up, activated gate and product (Korthikanti
    et al.'s count, 34 x dim in 16-bit, is for a GELU MLP of 4 x dim). A mixture: the SwiGLU of each
    expert the token goes through, its copies routed in and out and put back in order, their float32
    copy for the weighted sum, and the router's scores in float32."""
    kv = shape.n_kv_heads * (shape.dim // shape.n_heads)
    e = shape.experts
    if e is None or not e.holds(layer):
        ffn, routing = 4 * shape.ffn_dim, 0
    else:
        ffn = (e.top_k + e.shared) * 4 * shape.ffn_dim + 3 * e.top_k * shape.dim
        routing = 4 * scale * (e.top_k * shape.dim + 2 * e.count)
    return width * (6 * shape.dim + 2 * kv + ffn) + 2 * 4 * scale * shape.dim + routing


def formula(stage: Stage, lay: Layout, mixed: bool = True) -> int:
    """The closed-form peak of a step (see `peak`)."""
    return peak(stage, lay, mixed)[0]


def building_bytes(shape, scale: int = 1) -> int:
    """What a rank holds whole, besides its shards, while a fresh model gets its initial weights
    (`materialize`): the embedding and head tables, the final norm and one block. Two tables when
    tied too: the model's own head has storage of its own until it is tied again."""
    tables = 2 * shape.embedding_params
    return scale * 4 * (tables + shape.dim + max(shape.block_params(i) for i in range(shape.n_layers)))


def growth_peak(before_params: int, old: Layout, after: Stage, new: Layout, scale: int = 1) -> int:
    """The closed-form peak of a growth: the old model's shards and AdamW state, the new model's
    shards, what building it holds whole, and its carried AdamW state (see `_carried`)."""
    old_state = scale * (4 + ADAMW_BYTES) * before_params // (old.dp_shard * old.tp)
    new_shards = scale * 4 * after.params // (new.dp_shard * new.tp)
    building = building_bytes(after.shape, scale)
    return old_state + building + new_shards + scale * _carried(after, new_shards * 2)


def _carried(after: Stage, sharded: int) -> int:
    """AdamW state carried into the grown model: shard by shard through a depth growth (`sharded`
    bytes), but whole through a width growth (its index maps gather every moment) until the first
    step lays it out; through an upcycling, sharded as soon as each moment is made whole for the experts
    (ops.experts.carry_experts: the dense moment and its copies)."""
    if not any(g.optimizer == "carry" for g in after.growths):
        return 0
    if any(g.kind == "width" for g in after.growths):
        return ADAMW_BYTES * after.params
    e = after.shape.experts
    if any(g.kind == "experts" for g in after.growths) and e is not None:  # one moment whole, once and per expert
        return sharded + ADAMW_BYTES // 2 * (e.count + 1) * after.shape.dim * after.shape.ffn_dim
    return sharded


def measure(plan: Plan, cluster: Cluster) -> list[Memory]:
    """Every stage's peak on rank 0 of `cluster.gpus`, and every growth's. Needs no GPU; raises
    ValueError for a layout that is not the cluster's."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    world = World(0, cluster.gpus)
    layouts = [stage_layout(s, world) for s in plan.stages]  # refused before anything is built
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=cluster.gpus)
    try:
        for lay in set(layouts):
            parallel_dims(lay, world)  # its mesh, built outside FakeTensorMode
        out: list[Memory] = []
        for stage, lay in zip(plan.stages, layouts):
            memory = _stage(stage, lay, world, plan)
            if stage.growths and out:
                out.append(_growth(out[-1], memory))
            out.append(memory)
        return out
    finally:
        if owned:
            from growdsl.runtime.distributed import close

            close()


def _stage(stage: Stage, lay: Layout, world: World, plan: Plan) -> Memory:
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    from growdsl.ops.experts import even_routing
    from growdsl.ops.layout import local, named_parameters
    from growdsl.ops.model import transformer
    from growdsl.runtime.distributed import is_sharded

    t = stage.training
    mixed = mixed_on_gpus(stage)
    max_seq = max(s.training.seq_len for s in plan.stages)
    micro = micro_batch(stage, lay)
    with FakeTensorMode(allow_non_fake_inputs=True), _meshes_outside_fake_mode():
        model = transformer(stage.shape, max_seq)  # fake weights: shapes only
        if stage.shape.tied_embeddings:
            model.output.weight = model.tok_embeddings.weight
        training, ranks = _as_laid_out(t, lay, world)
        model = parallelize(model, training, max_seq, ranks, torch.float32, mixed)
        params = named_parameters(model)
        trained = {n: p for n, p in params.items() if not stage.frozen.holds(n)}
        for name, p in params.items():
            p.requires_grad_(name in trained)
        shards = {id(p): local(p).numel() for p in params.values()}  # a tied table once
        weights = 4 * sum(shards.values())
        gradients = 4 * sum(local(p).numel() for p in {id(p): p for p in trained.values()}.values())
        tracker = FSDPMemTracker(model) if is_sharded(model) else MemTracker()
        tokens = torch.zeros(micro, t.seq_len, dtype=torch.long)
        with unset_fake_temporarily():  # the counts are real numbers: the experts split their tokens by them
            even_routing(model, micro * t.seq_len)
        if not is_sharded(model):
            tracker.track_external(model)
        with tracker:
            with _autocast(mixed and not is_sharded(model)):
                logits = model(tokens)
            if lay.tp > 1:  # loss parallel on the vocab shard: its float32 log-softmax (its own op needs data)
                loss = torch.nn.functional.log_softmax(logits.to_local().float(), -1).mean()
            else:
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
            loss.backward()
        peak = max(device["Total"] for device in tracker.get_tracker_snapshot("peak").values())
    adamw = gradients // 4 * ADAMW_BYTES
    return Memory(
        what=f"stage {stage.index}",
        stage=stage,
        layout=lay,
        micro_batch=micro,
        weights=weights,
        gradients=gradients,
        adamw=adamw,
        activations=max(0, peak - weights - gradients),
        peak=peak + adamw,
        formula=formula(stage, lay, mixed),
    )


def _as_laid_out(t, lay: Layout, world: World):
    """(training, world) to lay the fake model out with: compile off (the fake step would compile it;
    inductor's fusions only save memory), and DDP measured as one process, which is what each of its
    ranks holds (torch's DDP wrapper checks real storage, which fake tensors do not have)."""
    p = replace(t.parallel, compile=False)
    if lay.dp_shard == 1 and lay.tp == 1:
        return replace(t, parallel=replace(p, dp_replicate=1, dp_shard=1)), World()
    return replace(t, parallel=p), world


def _growth(before: Memory, after: Memory) -> Memory:
    """The peak of a growth: the old model's shards and AdamW state, the new model's shards (and,
    carried, its AdamW state), and what building it holds whole, all at once."""
    building = building_bytes(after.stage.shape)
    carried = _carried(after.stage, after.adamw)
    peak = before.weights + before.adamw + building + after.weights + carried
    return replace(
        after,
        what=f"growth before stage {after.stage.index}",
        gradients=0,
        adamw=before.adamw + carried,
        activations=0,
        weights=before.weights + building + after.weights,
        peak=peak,
        formula=peak,
    )


@contextmanager
def _meshes_outside_fake_mode():
    """FSDP over a tensor-parallel model joins the two meshes (DeviceMesh._concatenate), which finds
    this rank's coordinates in a mesh tensor: real numbers the fake mode would hide."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.distributed.device_mesh import DeviceMesh

    original = DeviceMesh._concatenate

    def concatenate(meshes):
        with unset_fake_temporarily():
            return original(meshes)

    DeviceMesh._concatenate = staticmethod(concatenate)
    try:
        yield
    finally:
        DeviceMesh._concatenate = staticmethod(original)


def _autocast(on: bool):
    from contextlib import nullcontext

    return torch.autocast("cpu", torch.bfloat16) if on else nullcontext()


def advice(memory: Memory, cluster: Cluster) -> str | None:
    """What to change so that a step that does not fit does: a smaller micro-batch (activations fall
    with it), `ac full`, more GPUs (the shards fall with them); None when it fits."""
    if memory.peak <= cluster.memory:
        return None
    if memory.growth:
        # the tables and the block a rank builds whole do not shrink with more GPUs
        building = building_bytes(memory.stage.shape)
        if building >= cluster.memory:
            return f"GPUs with more than {building / GiB:.0f} GiB: each holds the embeddings, head and a block whole"
        return "more GPUs: the old and the new model's shards fall with them"
    hints = []
    room = cluster.memory - memory.steady
    if memory.activations and room > 0 and memory.micro_batch > 1:
        fits = int(room // (memory.activations / memory.micro_batch))
        local = memory.stage.training.batch_seqs // memory.layout.data_parallel
        divisors = [d for d in range(1, min(fits, memory.micro_batch) + 1) if local % d == 0]
        if divisors:  # the largest micro-batch that fits and divides what each data-parallel rank takes
            hints.append(f"micro_batch {divisors[-1]}")
    if memory.activations and memory.stage.training.parallel.activation_checkpoint != "full":
        hints.append("ac full")
    sharded_over_all = memory.layout.dp_shard * memory.layout.tp == cluster.gpus
    if sharded_over_all and cluster.memory > memory.activations:
        need = math.ceil(cluster.gpus * memory.steady / (cluster.memory - memory.activations))
        hints.append(f"{8 * math.ceil(need / 8)} GPUs or more")
    return ", or ".join(hints) if hints else "more GPUs"


COLUMNS = ("", "layout", "micro", "ac", "weights", "grads", "AdamW", "activ.", "peak", "formula")


def cells(m: Memory) -> tuple[str, ...]:
    """One row of the table, COLUMNS' cells, GiB; a growth has no micro-batch, gradients or activations."""
    g = m.growth
    gib = "{:.2f}".format
    return (
        m.what,
        f"dp {m.layout.dp_replicate}x{m.layout.dp_shard} tp {m.layout.tp}",
        "" if g else str(m.micro_batch),
        "" if g else m.stage.training.parallel.activation_checkpoint,
        gib(m.weights / GiB),
        "" if g else gib(m.gradients / GiB),
        gib(m.adamw / GiB),
        "" if g else gib(m.activations / GiB),
        gib(m.peak / GiB),
        "" if g else gib(m.formula / GiB),
    )


def render(memories: list[Memory], cluster: Cluster, mixed: bool) -> tuple[str, list[str]]:
    """The table (GiB a rank, rank 0's shard: the largest) and the lines for what does not fit."""
    head = (
        f"{cluster.gpus} GPUs, {cluster.memory / GiB:g} GiB each for the run "
        f"({RESERVED_GIB:g} GiB left to CUDA and NCCL); "
        f"{'bf16 compute over float32 weights' if mixed else 'float32 compute'}, AdamW in float32; "
        f"GiB on rank 0 (the largest shard) at the peak of a step"
    )
    rows: list[tuple[str, ...]] = [(*COLUMNS, "")]
    problems = []
    for m in memories:
        fits = m.peak <= cluster.memory
        rows.append((*cells(m), "fits" if fits else "DOES NOT FIT"))
        if not fits:
            line = m.stage.growths[0].line if m.growth else m.stage.line
            problems.append(
                f"{m.what} (line {line}) needs {m.peak / GiB:.3g} GiB a GPU, {cluster.memory / GiB:.3g} GiB "
                f"are there: {advice(m, cluster)}"
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head, ""] + [
        "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows
    ]
    return "\n".join(lines), problems
