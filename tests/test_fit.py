"""Will it fit: the memory of every stage on one GPU of N, measured on the real sharding (a fake
process group of N ranks, FakeTensorMode, torch's memory tracker), and the closed form the run's
start-up check uses."""

import math
from dataclasses import replace

import pytest
from ops_helpers import TINY_RUN

from growdsl.plan import plan_source
from growdsl.runtime.distributed import Layout, World, stage_layout
from growdsl.runtime.fit import Cluster, GiB, advice, measure, peak

SCHEDULE = (
    TINY_RUN.replace("batch 4 seqs", "batch 16 seqs")
    + "growth optimizer carry\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps\n"
)


def shards(plan, stage: int, ranks: int, only=lambda name: True) -> int:
    """Bytes of float32 weights on rank 0 when every tensor (those `only` names) is cut on its first dim
    into `ranks` (FSDP2 gives rank 0 the ceiling)."""
    from growdsl.ops.model import build_model

    model = build_model(plan.stages[stage].shape, 32)
    return sum(4 * math.ceil(p.shape[0] / ranks) * p[0].numel() for n, p in model.named_parameters() if only(n))


@pytest.fixture(scope="module")
def fsdp4():
    plan = plan_source(SCHEDULE)
    return plan, measure(plan, Cluster(4, 10 * GiB))


def test_the_shards_measured_are_fsdps_and_adamw_holds_two_moments_of_each(fsdp4):
    plan, memories = fsdp4
    assert [m.what for m in memories] == ["stage 0", "growth before stage 1", "stage 1"]
    for m, index in ((memories[0], 0), (memories[2], 1)):
        assert m.layout == Layout(1, 4, 1) and m.micro_batch == 4  # 16 sequences over 4 ranks
        assert m.weights == shards(plan, index, 4) and m.gradients == m.weights and m.adamw == 2 * m.weights
        assert m.activations > 0
    # the 2-layer model's shards and state, the 4-layer one's shards and carried state, and what a rank
    # holds whole while the 4-layer model gets its weights: embedding, head, final norm and one block
    growth, target = memories[1], plan.stages[1].shape
    assert not target.tied_embeddings
    building = 4 * (2 * target.vocab_size * target.dim + target.dim + target.layer_params)
    assert growth.peak == memories[0].weights + memories[0].adamw + building + memories[2].weights + memories[2].adamw


def test_frozen_parameters_take_no_gradients_and_no_adamw_state(fsdp4):
    plan = plan_source(SCHEDULE.replace("train 10 steps\n", "train 10 steps with freeze base embeddings head\n"))
    frozen = measure(plan, Cluster(4, 10 * GiB))[2]
    new_layers = shards(plan, 1, 4, only=lambda name: name.startswith(("layers.2.", "layers.3.")))
    assert frozen.weights == fsdp4[1][2].weights and frozen.gradients == new_layers  # the 2 layers the stack added
    assert frozen.adamw == 2 * new_layers and frozen.peak < fsdp4[1][2].peak


def test_activations_grow_with_the_micro_batch_and_fall_with_full_checkpointing(fsdp4):
    plan, memories = fsdp4
    half = measure(plan_source(SCHEDULE.replace("seq 32", "seq 32\nmicro_batch 2")), Cluster(4, 10 * GiB))
    full = measure(plan_source(SCHEDULE.replace("seq 32", "seq 32\nac full")), Cluster(4, 10 * GiB))
    assert half[2].micro_batch == 2 and half[2].activations < memories[2].activations
    assert full[2].activations < memories[2].activations and full[2].weights == memories[2].weights


def test_tensor_parallel_cuts_the_weights_of_each_data_parallel_rank(fsdp4):
    plan, memories = fsdp4
    tp = measure(plan_source(SCHEDULE.replace("seq 32", "seq 32\ntp 2")), Cluster(4, 10 * GiB))
    assert tp[2].layout == Layout(1, 2, 2) and tp[2].micro_batch == 8  # 16 sequences over 2 data-parallel ranks
    assert tp[2].weights < shards(plan, 1, 2)  # TP cuts the blocks' weights again, within each FSDP shard


def test_a_stage_that_does_not_fit_is_told_what_to_change(fsdp4):
    plan, memories = fsdp4
    m = memories[2]
    room = m.steady + m.activations // 2  # half of this micro-batch's activations fit
    assert advice(m, Cluster(4, m.peak)) is None
    assert advice(m, Cluster(4, room)) == "micro_batch 2, or ac full"
    # the activations fit, half the shards do not: twice the GPUs
    assert advice(m, Cluster(4, m.steady // 2 + m.activations)).endswith("ac full, or 8 GPUs or more")


def test_the_closed_form_counts_shards_by_layout():
    stage = plan_source(SCHEDULE).stages[1]
    one, steady = peak(stage, Layout(1, 1, 1))
    assert steady == 16 * stage.params  # float32 weights, gradients, two moments
    assert peak(stage, Layout(1, 4, 1))[1] == 4 * stage.params  # FSDP over 4
    assert peak(stage, Layout(4, 1, 1))[1] == steady  # DDP: whole replicas
    assert peak(stage, Layout(1, 2, 2))[1] == 4 * stage.params  # FSDP 2 x TP 2
    bigger = replace(stage, training=replace(stage.training, micro_batch=stage.training.batch_seqs))
    assert peak(bigger, Layout(1, 4, 1))[0] > peak(stage, Layout(1, 4, 1))[0]  # the activations of 16, not 4


def test_fit_command_says_what_does_not_fit_and_exits_1(tmp_path, capsys):
    from growdsl.cli import main

    schedule = tmp_path / "s.grow"
    schedule.write_text(SCHEDULE)
    assert main(["fit", str(schedule), "--gpus", "3", "--memory", "80"]) == 1
    assert "a batch of 16 sequences does not split over 3 data-parallel ranks" in capsys.readouterr().err
    assert main(["fit", str(schedule), "--gpus", "4", "--memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "every stage and growth fits 4 GPUs of 80 GiB" in out and "growth before stage 1" in out
    assert main(["fit", str(schedule), "--gpus", "4", "--memory", "2.0001"]) == 1
    err = capsys.readouterr().err
    assert f"{schedule}: does not fit: stage 0 (line 7) needs " in err


def test_ddp_ranks_hold_the_whole_model_and_a_width_growth_gathers_carried_moments():
    plan = plan_source(SCHEDULE.replace("seq 32", "seq 32\ndp_replicate 4").replace("stack x2", "widen dim 64"))
    memories = measure(plan, Cluster(4, 10 * GiB))
    before, growth, after = memories
    assert after.layout == Layout(4, 1, 1) and after.weights == shards(plan, 1, 1)  # whole, on every rank
    # width carry: the grown moments are whole (gathered by the index maps) until the first step
    whole_moments = 8 * plan.stages[1].params
    building = 4 * (plan.stages[1].params - plan.stages[1].shape.layer_params)  # 2 layers: one whole
    assert growth.peak == before.weights + before.adamw + building + after.weights + whole_moments


def test_a_tied_model_trains_on_whole_replicas_only():
    """torchtitan 0.2.2 shards the embedding and the head in separate groups (FSDP refused the shared
    table with its own ValueError): a tied model is refused sharded, in one line, and DDP takes it."""
    tied = SCHEDULE.replace("vocab 400", "vocab 400 tied")
    for layout in ("", "tp 2", "dp_shard 2\ntp 2"):  # FSDP over all by default
        stage = plan_source(tied.replace("seq 32", f"seq 32\n{layout}")).stages[0]
        with pytest.raises(ValueError, match="tied embeddings cannot be sharded .* dp_replicate 4"):
            stage_layout(stage, World(0, 4))
    ddp = plan_source(tied.replace("seq 32", "seq 32\ndp_replicate 4")).stages[0]
    assert stage_layout(ddp, World(0, 4)) == Layout(4, 1, 1)


def test_an_upcycling_is_measured_with_its_experts_routed_evenly_and_its_moments_laid_out_one_at_a_time():
    """A mixture's counts need the values: fit routes each expert an even share (the for-loop experts go
    through every routed token once, whoever gets it). The experts' shards and the activations of the
    tokens each goes through are measured; the closed form agrees to 15%."""
    plan = plan_source(SCHEDULE.replace("stack x2", "upcycle experts 4 top 2 shared 1"))
    before, growth, after = measure(plan, Cluster(4, 10 * GiB))
    assert after.weights == shards(plan, 1, 4) and after.adamw == 2 * after.weights
    assert after.activations > before.activations  # each token goes through 2 experts and the shared one
    for m in (before, after):
        assert abs(m.formula / m.peak - 1) < 0.15, (m.what, m.formula, m.peak)
    shape = plan.stages[1].shape
    building = 4 * (2 * shape.vocab_size * shape.dim + shape.dim + shape.block_params(0))  # a mixture whole
    one_moment = 4 * (1 + 4) * shape.dim * shape.ffn_dim  # a dense moment of one weight, and its 4 copies, whole
    assert growth.peak == before.weights + before.adamw + building + after.weights + after.adamw + one_moment
