"""The shipped recipes (schedules/recipes): LLaMA-Pro, SOLAR's depth up-scaling and G_stack from an
existing model, each run end to end on a small Llama made here with transformers (the real models
are not reachable), at a small batch and a few steps, then exported back to transformers, whose
logits equal ours."""

import json

import pytest
import torch
from conftest import ROOT
from test_imported import assert_exported_logits, hf_llama

from growdsl.cli import main
from growdsl.plan import plan_file

transformers = pytest.importorskip("transformers")

RECIPES = ROOT / "schedules" / "recipes"
SMALL = {  # what a CPU test trains instead of the recipe's sizes
    "seq 4096": "seq 32",
    "seq 2048": "seq 32",
    "batch 1024 seqs": "batch 2 seqs\nval off",
    "warmup 2000 steps": "warmup 1 step",
    "warmup 3000 steps": "warmup 1 step",
    "train 80B": "train 3 steps",
    "train 20B": "train 3 steps",
    "train 750B": "train 3 steps",
}


def small(recipe: str, folder, layers: int):
    """The recipe beside a small Llama of its base's depth, at CPU-test sizes."""
    text = (RECIPES / recipe).read_text()
    for big, little in SMALL.items():
        text = text.replace(big, little)
    name = text.split('model from "')[1].split('"')[0]
    hf_llama(folder / name, layers=layers)
    (folder / recipe).write_text(text)
    return folder / recipe


@pytest.mark.parametrize("recipe, base, grown", [("llama_pro.grow", 32, 40), ("solar.grow", 32, 48),
                                                 ("gstack_from_model.grow", 6, 24)])  # fmt: skip
def test_a_recipe_plans_runs_and_exports_back_to_transformers(recipe, base, grown, data_dir, tmp_path, capsys):
    schedule = small(recipe, tmp_path, base)
    plan = plan_file(schedule)
    assert plan.start.shape.n_layers == base and plan.stages[-1].shape.n_layers == grown
    if recipe == "llama_pro.grow":  # every fifth block new, from zero; only those train
        growth = plan.stages[0].growths[0]
        assert growth.guarantee == "exact" and plan.stages[0].frozen.layers == tuple(i for i in range(40) if i % 5 != 4)
        assert plan.stages[0].trainable_params == 8 * plan.stages[0].shape.layer_params
    if recipe == "gstack_from_model.grow":  # the base's stated cost is in the FLOPs
        assert plan.start.flops == plan.start.shape.flops_per_token(32) * 10 * 10**9
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run)]) == 0
    log = (run / "log.txt").read_text()
    assert f"-> {grown}L" in log and ("; preserved" in log) == (recipe == "llama_pro.grow")
    assert main(["export", str(run), "--hf", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == grown
    assert_exported_logits(run, out)


def header_only_llama(folder, layers: int, **config):
    """A Llama folder of real size whose weights are a sparse file: config.json and a safetensors
    header are all the plan reads, so a 7B recipe plans here on its real shape."""
    import struct

    from growdsl.plan.imported import expected_tensors, read_config

    folder.mkdir()
    config = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                  num_hidden_layers=layers, vocab_size=32000, rms_norm_eps=1e-5, max_position_embeddings=4096,
                  ) | config  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    shape = read_config(folder / "config.json")
    header, at = {}, 0
    for name, dims in expected_tensors(shape).items():
        size = 2 * int(torch.tensor(dims).prod())
        header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [at, at + size]}
        at += size
    text = json.dumps(header).encode()
    with (folder / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + at)


def test_the_full_size_recipes_plan_on_their_real_shapes(tmp_path, capsys):
    import shutil

    for name, layers in (("llama-2-7b", 32), ("base-32l", 32), ("base-6l", 6)):
        header_only_llama(tmp_path / name, layers)
    for recipe in ("llama_pro.grow", "solar.grow", "gstack_from_model.grow"):
        shutil.copy(RECIPES / recipe, tmp_path / recipe)
    pro = plan_file(tmp_path / "llama_pro.grow")
    assert pro.start.shape.params == 6_738_415_616  # Llama-2-7B
    stage = pro.stages[0]
    assert stage.params == 6_738_415_616 + 8 * stage.shape.layer_params and stage.shape.n_layers == 40
    assert stage.trainable_params == 8 * 202_383_360  # the eight new blocks
    solar = plan_file(tmp_path / "solar.grow").stages[0]
    assert solar.shape.n_layers == 48 and solar.params == 6_738_415_616 + 16 * 202_383_360
    assert main(["plan", str(tmp_path / "llama_pro.grow")]) == 0
    out, err = capsys.readouterr()
    assert "freeze base embeddings head: layers" in out and "trains 1.62B of 8.36B parameters" in out
    assert not err  # g = 1.25 is LLaMA-Pro's own choice: the paper's g range is for bases a schedule trains
    assert (
        f"data: none named; a model it starts from reads data tokenized by its own tokenizer: growdsl data "
        f"prepare CORPUS --tokenizer {tmp_path / 'llama-2-7b'}" in out
    )
    llama3 = dict(intermediate_size=14336, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0)
    header_only_llama(tmp_path / "llama-3-8b", 32, **llama3)
    shutil.copy(RECIPES / "upcycle.grow", tmp_path / "upcycle.grow")
    upcycled = plan_file(tmp_path / "upcycle.grow")
    ffn, router = 3 * 4096 * 14336, 4096 * 8  # a block's feed-forward, and its router
    assert upcycled.start.shape.params == 8_030_261_248  # Llama-3-8B
    assert upcycled.stages[0].params == 8_030_261_248 + 32 * (7 * ffn + router) == 47_491_321_856
    assert upcycled.stages[0].shape.active_params == 8_030_261_248 + 32 * (ffn + router) == 13_668_454_400


def test_the_upcycling_recipe_runs_from_a_llama_and_exports_a_mixtral_with_the_same_logits(data_dir, tmp_path):
    """Llama -> 8 experts top 2 (copies: exact, checked in the run) -> trained -> a Hugging Face Mixtral."""
    schedule = small("upcycle.grow", tmp_path, 4)
    plan = plan_file(schedule)
    (growth,) = plan.stages[0].growths
    assert growth.kind == "experts" and growth.guarantee == "exact"
    assert (plan.stages[0].shape.experts.count, plan.stages[0].shape.experts.top_k) == (8, 2)
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run)]) == 0
    assert "upcycle direct" in (run / "log.txt").read_text() and "; preserved" in (run / "log.txt").read_text()
    assert main(["export", str(run), "--hf", str(out)]) == 0
    exported = json.loads((out / "config.json").read_text())
    assert exported["num_local_experts"] == 8 and exported["router_aux_loss_coef"] == 0.01
    assert_exported_logits(run, out, transformers.MixtralForCausalLM)
