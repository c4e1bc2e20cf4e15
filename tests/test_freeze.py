"""Freezing by origin: the plan says which layers a `freeze` leaves out, how many parameters train and
what a token costs then; a run leaves the frozen parameters bit-identical, keeps no optimizer state
for them, and resumes exactly."""

import pytest
import torch
from ops_helpers import TINY_RUN

from growdsl.eval.checkpoints import load
from growdsl.plan import plan_source
from growdsl.plan.freeze import Frozen, flops_per_token, trainable_params
from growdsl.plan.shape import ModelShape
from growdsl.runtime import checkpoint
from growdsl.runtime.trainer import Trainer

# LLaMA-Pro from scratch: a 2-layer base, each layer followed by a zero-initialised copy (an identity
# block), then only the new blocks train.
PRO = TINY_RUN + 'seed 4\nval off\ncheckpoint every 3 steps\ntrain 2L for 6 steps\nstack layers "1-1-2-2" init zero\n'


def test_the_plan_names_what_each_word_freezes(errors):
    plan = plan_source(PRO + "train 8 steps with freeze base embeddings head\n")
    stage = plan.stages[1]
    assert stage.frozen == Frozen(layers=(0, 2), embeddings=True, head=True)
    s = stage.shape
    assert stage.trainable_params == 2 * s.layer_params  # the two new blocks, nothing else
    new = plan_source(PRO + "train 8 steps with freeze new\n").stages[1]
    assert new.frozen == Frozen(layers=(1, 3)) and new.trainable_params == s.params - 2 * s.layer_params
    copies = plan_source(TINY_RUN + "train 2L for 6 steps\nstack x2\ntrain 8 steps with freeze copies\n").stages[1]
    assert copies.frozen.layers == (2, 3)  # G_stack: the second pass is the copy
    said = [e.message for e in errors(PRO + "train 8 steps with freeze bsae\n")]
    assert said == ["unknown part 'bsae' to freeze"]
    said = [e.message for e in errors(PRO + "train 8 steps with freeze base new embeddings head\n")]
    assert said == ["freeze base new embeddings head: nothing is left to train"]
    tied = (
        TINY_RUN.replace("padded", "padded tied") + "train 2L for 6 steps\nstack x2\ntrain 8 steps with freeze head\n"
    )
    assert "one table in this tied model" in errors(tied)[0].message


def test_a_frozen_token_costs_what_its_backward_pass_skips():
    shape = ModelShape(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=400)
    assert flops_per_token(shape, 128, Frozen()) == shape.flops_per_token(128)
    p, attention, head = shape.layer_params, 4 * 4 * 16 * 128, shape.embedding_params + shape.dim
    # everything but layer 2 frozen: layers 0-1 forward only (nothing below them trains), layer 2 the
    # whole 6, layer 3 forward and gradients passed down, the head forward and gradients down
    frozen = Frozen(layers=(0, 1, 3), embeddings=True, head=True)
    expected = 2 * (2 * p + attention) + (6 * p + 3 * attention) + (4 * p + 3 * attention) + 4 * head
    assert flops_per_token(shape, 128, frozen) == expected
    assert trainable_params(shape, frozen) == p
    plan = plan_source(PRO + "train 8 steps with freeze base embeddings head\n")
    final, b = plan.stages[-1], plan.totals.baseline  # the baseline trains all: a whole token's FLOPs a token
    assert b.flops == b.steps * final.shape.flops_per_token(32) * final.training.tokens_per_step
    assert final.flops_per_token < final.shape.flops_per_token(32) and b.steps < 6 + 8


def test_frozen_parameters_stay_bit_identical_and_keep_no_optimizer_state(data_dir, tmp_path):
    plan = plan_source(PRO + "train 8 steps with freeze base embeddings head\n")
    Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path / "checkpoints").run()
    (tmp_path / "run.json").write_text(f'{{"data": "{data_dir}"}}')
    (tmp_path / "plan.json").write_text(plan.to_json())
    (tmp_path / "tokenizer.json").write_bytes((data_dir / "tokenizer.json").read_bytes())
    saved = checkpoint.committed(tmp_path / "checkpoints")
    grown = next(c for c in saved if (p := checkpoint.read_progress(c)).stage == 1 and p.step == 0)
    before, after = load(grown).model.state_dict(), load(saved[0]).model.state_dict()
    frozen = plan.stages[1].frozen
    changed = {name for name in after if name != "freqs_cis" and not torch.equal(before[name], after[name])}
    assert changed and all(not frozen.holds(name) for name in changed)
    assert all(name.startswith(("layers.1.", "layers.3.")) for name in changed)
    names = checkpoint.read_progress(saved[0]).optimizer_names
    assert names and all(name.startswith(("layers.1.", "layers.3.")) for name in names)


def test_a_frozen_stage_killed_midway_resumes_exactly(data_dir, tmp_path):
    plan = plan_source(PRO + "train 8 steps with freeze base embeddings head\ntrain 4 steps\n")
    whole = Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path / "a").run()

    def dies(line: str) -> None:
        if "stage 1 step 5/8" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(plan, data_dir, log=dies, log_every=1, checkpoint_dir=tmp_path / "b").run()
    resumed = Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path / "b", resume=True).run()
    assert resumed[0].losses == whole[1].losses[3:] and resumed[1].losses == whole[2].losses


def test_freezing_what_a_growth_just_made_is_refused_where_it_would_stay_as_it_starts(errors):
    base = TINY_RUN + "train 2L for 6 steps\n"
    said = errors(base + "stack x2 init random ramp 4 steps\ntrain 8 steps with freeze new\n")
    assert "freezes layers (or units) this stage's growth starts at random" in said[0].message
    said = errors(base + "widen dim 64 heads 4 ffn 128 init random ramp 4 steps\ntrain 8 steps with freeze base\n")
    assert "starts at random" in said[0].message
    said = errors(base + "stack x2\nstack x2\ntrain 8 steps with freeze base\n")
    assert "grew 2 times without training between" in said[0].message
    assert errors(base + "train 8 steps with freeze none base\n")[0].message.startswith("freeze none stands alone")
    plan = plan_source(base + 'stack layers "1-1-2-2" init zero\ntrain 8 steps with freeze new\n')
    assert any("starts at zero: they stay as they start" in w.message for w in plan.warnings)
    later = plan_source(base + "stack x2 init random ramp 4 steps\ntrain 8 steps\ntrain 8 steps with freeze new\n")
    assert later.stages[2].frozen.layers == (2, 3)  # trained since: freezing them now is a choice


def test_a_head_that_trains_alone_still_pays_for_the_gradient_into_it():
    shape = ModelShape(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=400)
    p, attention, head = shape.layer_params, 4 * 4 * 16 * 128, shape.embedding_params + shape.dim
    only_head = Frozen(layers=(0, 1), embeddings=True)
    # the final norm's gradient needs the output projection's input gradient
    assert flops_per_token(shape, 128, only_head) == 2 * (2 * p + attention) + 6 * head


def test_a_width_growth_at_random_refuses_frozen_embeddings_and_a_fractional_context(errors):
    base = TINY_RUN + "train 2L for 6 steps\n"
    said = errors(
        base + "widen dim 64 heads 4 ffn 128 init random ramp 4 steps\ntrain 8 steps with freeze embeddings\n"
    )
    assert "starts at random" in said[0].message
    assert errors("model tiny rope_scaling none 0.5\ntrain 2L for 9 steps\n")[0].message == (
        "rope_scaling's context length must be a whole number, not '0.5'"
    )
