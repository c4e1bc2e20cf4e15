"""Starting from an existing model (`model from "DIR"`): a Hugging Face Llama folder is planned on its
own shape and read into growdsl with transformers' logits (GQA, RoPE theta and scaling, tied or
untied, sharded); a folder that is not such a model is an error naming the file."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from growdsl.ops.model import build_model
from growdsl.plan import plan_source
from growdsl.plan.imported import ModelFolderError, read_hf
from growdsl.plan.plan import Start
from growdsl.runtime.pretrained import load_start

transformers = pytest.importorskip("transformers")


def hf_llama(folder: Path, *, tied=False, rope=None, shards=False, vocab=400, layers=4, seed=0) -> Path:
    """A small random Llama saved as transformers saves it (GQA: 4 heads over 2 kv heads)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        rope_theta=500000.0,
        rope_scaling=rope,
        tie_word_embeddings=tied,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
    )
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # transformers initialises norms to 1: make them tell layers apart
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(folder), max_shard_size="100KB" if shards else "10GB")
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return hf_llama(tmp_path_factory.mktemp("hf") / "plain")


def assert_exported_logits(run: Path, out: Path, kind=transformers.LlamaForCausalLM) -> None:
    """transformers' logits of the export `out` equal growdsl's of the run's newest checkpoint."""
    from growdsl.eval.checkpoints import load

    trained = load(run)
    tokens = torch.randint(0, 394, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = trained.model(tokens)
        theirs = kind.from_pretrained(str(out), dtype=torch.float32).eval()(tokens).logits
    assert (ours - theirs).abs().max().item() < 1e-4 * ours.abs().max().item()


def start_of(folder: Path) -> Start:
    shape = read_hf(folder).shape
    return Start(name=str(folder), folder=str(folder.resolve()), kind="hf", shape=shape, tokens=0, flops=0)


@pytest.mark.parametrize(
    "kind",
    [
        dict(),
        dict(tied=True, rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64}),
        dict(shards=True, rope={"rope_type": "linear", "factor": 4.0}),
    ],
    ids=["gqa-untied-rope-theta", "tied-llama3-scaling", "sharded-linear-scaling"],
)  # fmt: skip
def test_a_hugging_face_llama_gives_transformers_logits_in_growdsl(tmp_path, kind):
    folder = hf_llama(tmp_path / "hf", **kind)
    if kind.get("shards"):
        assert (folder / "model.safetensors.index.json").exists() and len(list(folder.glob("*.safetensors"))) > 2
    start = start_of(folder)
    ours = build_model(start.shape, 200, seed=1)
    load_start(start, ours, 200)
    tokens = torch.randint(0, 400, (2, 200), generator=torch.Generator().manual_seed(3))  # past 64: scaled RoPE
    with torch.no_grad():
        theirs = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()(tokens).logits
        mine = ours(tokens)
    assert (mine - theirs).abs().max().item() < 1e-4 * theirs.abs().max().item()
    assert start.shape.tied_embeddings == bool(kind.get("tied")) and start.shape.n_kv_heads == 2


def test_the_plan_starts_from_the_model_and_counts_only_the_cost_it_is_told(plain, tmp_path):
    schedule = tmp_path / "s.grow"
    shutil.copytree(plain, tmp_path / "base")
    schedule.write_text('model from "base"\nseq 32\nbatch 4 seqs\nwarmup 1 step\nstack x2\ntrain 10 steps\n')
    from growdsl.plan import plan_file

    plan = plan_file(schedule)
    assert plan.start.shape.n_layers == 4 and plan.start.flops == 0 and plan.start.folder == str(tmp_path / "base")
    assert [s.shape.n_layers for s in plan.stages] == [8] and plan.stages[0].growths[0].source_layers == 4
    assert plan.totals.flops == plan.stages[0].flops  # nothing spent before it but what it says
    schedule.write_text(schedule.read_text().replace('"base"', '"base" trained 2B'))
    plan = plan_file(schedule)
    assert plan.start.flops == plan.start.shape.flops_per_token(32) * 2 * 10**9
    assert plan.totals.flops == plan.start.flops + plan.stages[0].flops


def test_a_schedule_that_contradicts_the_model_is_an_error_at_its_line(plain, errors):
    said = errors(f'model from "{plain}"\ntrain 6L for 10 steps\n')
    assert said[0].span.line == 2 and "6" in said[0].message
    said = errors(f'model from "{plain}"\nmodel tiny\ntrain 10 steps\n')
    assert said[0].message == "the model is declared twice"
    said = errors(f'model from "{plain}" trained 10 steps\ntrain 10 steps\n')
    assert "`trained` takes tokens" in said[0].message


def broken(tmp_path, plain, how):
    folder = tmp_path / "m"
    shutil.copytree(plain, folder)
    config = json.loads((folder / "config.json").read_text())
    if how == "mistral":
        config["model_type"] = "mistral"
    elif how == "shape":
        config["intermediate_size"] = 128
    elif how == "bias":
        config["attention_bias"] = True
    elif how == "yarn":
        config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    elif how == "pickle":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif how == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "no config":
        (folder / "config.json").unlink()
    elif how == "nan theta":
        config["rope_theta"] = float("nan")
    elif how == "huge theta":
        config["rope_theta"] = 1e300
        config.pop("rope_parameters", None)
    elif how == "infinite factor":
        config["rope_scaling"] = {"rope_type": "llama3", "factor": float("inf")}
    elif how == "infinite eps":
        config["rms_norm_eps"] = float("inf")
    elif how == "dtype":  # integer weights (a quantised export): same size, another type
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data.replace(b'"F32"', b'"I32"', 1))
    (folder / "config.json").exists() and (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "how, said",
    [
        ("mistral", "model_type is 'mistral', not 'llama'"),
        ("shape", "model.layers.0.mlp.gate_proj.weight is [96, 64], but config.json makes it [128, 64]"),
        ("bias", "attention_bias is True"),
        ("yarn", "RoPE scaling 'yarn'"),
        ("pickle", "holds its weights as pickles (.bin/.pt), which can run code"),
        ("truncated", "model.safetensors: model.layers"),
        ("no config", "config.json is missing"),
        ("dtype", "is I32; growdsl reads F32, F16, BF16"),
        # json.dumps writes NaN and Infinity, which no JSON reader should take (plan --json printed them)
        ("nan theta", "config.json is not valid JSON: NaN is not a number JSON allows"),
        ("infinite factor", "config.json is not valid JSON: Infinity is not a number JSON allows"),
        ("infinite eps", "config.json is not valid JSON: Infinity is not a number JSON allows"),
        ("huge theta", "rope_theta is 1e+300, not a number above 0 (and below 1e30)"),
    ],
)
def test_a_folder_that_is_not_a_llama_is_named_with_what_is_wrong(plain, tmp_path, capsys, how, said):
    from growdsl.cli import main

    folder = broken(tmp_path, plain, how)
    with pytest.raises(ModelFolderError, match=None):
        read_hf(folder)
    schedule = tmp_path / "s.grow"
    schedule.write_text('model from "m"\ntrain 10 steps\n')
    assert main(["plan", str(schedule)]) == 1
    err = capsys.readouterr().err
    assert f"{schedule}:1:12: error: " in err and said in err, err


def test_a_sharded_model_missing_a_shard_is_named(tmp_path):
    folder = hf_llama(tmp_path / "hf", shards=True)
    victim = sorted(folder.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(ModelFolderError, match=f"{victim} is missing"):
        read_hf(folder)


def test_a_run_starts_from_the_model_and_grows_it(plain, data_dir, tmp_path):
    from growdsl.runtime.trainer import Trainer

    plan = plan_source(f'model from "{plain}"\nseq 32\nbatch 4 seqs\nwarmup 1 step\nval off\nstack x2\ntrain 3 steps\n')
    lines = []
    trainer = Trainer(plan, data_dir, log=lines.append)
    trainer.start()
    hf = transformers.LlamaForCausalLM.from_pretrained(str(plain), dtype=torch.float32).eval()
    tokens = trainer.probe
    with torch.no_grad():
        assert (trainer.model(tokens) - hf(tokens).logits).abs().max().item() < 1e-4
    logs = trainer.run()
    assert "stack" in "".join(lines) and len(logs[0].losses) == 3 and trainer.shape.n_layers == 8
    assert any("has no tokenizer" in line for line in lines)


def test_the_data_must_be_tokenized_as_the_model_was(plain, data_dir, tmp_path, capsys):
    from growdsl.runtime.trainer import RunError, Trainer

    folder = tmp_path / "m"
    shutil.copytree(plain, folder)
    tokenizer = json.loads((data_dir / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two tokens' ids swapped: the same pieces, other ids
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    plan = plan_source(f'model from "{folder}"\nseq 32\nbatch 4 seqs\nwarmup 1 step\ntrain 3 steps\n')
    with pytest.raises(RunError, match="is tokenized by another tokenizer than the model it starts from"):
        Trainer(plan, data_dir, log=lambda _: None)
    from growdsl.cli import main

    schedule = tmp_path / "s.grow"
    schedule.write_text(f'model from "m"\ndata "{data_dir}"\nseq 32\nbatch 4 seqs\nwarmup 1 step\ntrain 3 steps\n')
    assert main(["plan", str(schedule)]) == 1  # said at plan time, before any model is built
    assert (
        f"is tokenized by another tokenizer than the model the schedule starts from: prepare it with "
        f"--tokenizer {folder.resolve()}" in capsys.readouterr().err
    )
    shutil.copy(data_dir / "tokenizer.json", folder / "tokenizer.json")
    Trainer(plan, data_dir, log=lambda _: None)  # its own tokenizer: accepted


def test_an_imported_model_grown_and_trained_exports_back_to_transformers(plain, data_dir, tmp_path):
    from growdsl.cli import main

    schedule = tmp_path / "s.grow"
    schedule.write_text(
        f'model from "{plain}"\nseq 32\nbatch 4 seqs\nwarmup 1 step\nval off\nstack x2\ntrain 3 steps\n'
    )
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run)]) == 0
    assert main(["export", str(run), "--hf", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] is None and config["max_position_embeddings"] == 256  # Llama 2's RoPE, its own
    assert config["num_hidden_layers"] == 8 and config["rope_theta"] == 500000.0
    assert_exported_logits(run, out)


def test_a_run_from_a_model_without_data_named_is_refused_not_fed_the_default_corpus(plain, tmp_path, capsys):
    from growdsl.cli import main

    schedule = tmp_path / "s.grow"
    schedule.write_text(f'model from "{plain}"\nseq 32\nbatch 4 seqs\nwarmup 1 step\ntrain 3 steps\n')
    assert main(["run", str(schedule), "--run-dir", str(tmp_path / "run")]) == 2
    assert "names no data; a model it starts from reads data tokenized by its own tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def edited(plain, tmp_path, change) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(plain, folder)
    config = json.loads((folder / "config.json").read_text())
    change(config, folder)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_configs_are_read_as_transformers_reads_them(plain, tmp_path):
    def both(config, folder):  # rope_scaling wins over rope_parameters, as in transformers
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": 20000.0}
        config["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}

    shape = read_hf(edited(plain, tmp_path / "a", both)).shape
    assert (shape.rope_scaling.kind, shape.rope_scaling.factor, shape.rope_theta) == ("linear", 4.0, 20000.0)

    def llama3(config, folder):  # no original length: max_position_embeddings, as in transformers
        config["rope_parameters"] = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 10000.0}

    assert read_hf(edited(plain, tmp_path / "b", llama3)).shape.rope_scaling.original_max_position_embeddings == 256

    def stale_index(config, folder):  # model.safetensors is what transformers loads first
        (folder / "model.safetensors.index.json").write_text('{"weight_map": {"x": "gone.safetensors"}}')

    assert read_hf(edited(plain, tmp_path / "c", stale_index)).files == ("model.safetensors",)

    def string_bool(config, folder):
        config["tie_word_embeddings"] = "false"

    with pytest.raises(ModelFolderError, match="tie_word_embeddings is 'false', not true or false"):
        read_hf(edited(plain, tmp_path / "d", string_bool))


@pytest.mark.parametrize(
    "header, said",
    [
        (b"[1, 2]", "its header is no table of tensors"),
        (b'{"__metadata__": [1]}', "its header is no table of tensors"),
        (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
         b'"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', "overlap or leave gaps"),
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "bytes past its last tensor"),
    ],
)  # fmt: skip
def test_a_crafted_safetensors_header_is_refused_before_anything_reads_it(plain, tmp_path, header, said):
    import struct

    folder = edited(plain, tmp_path, lambda config, folder: None)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(12))
    with pytest.raises(ModelFolderError, match=said):
        read_hf(folder)


def test_a_resume_needs_nothing_of_the_model_it_started_from(plain, data_dir, tmp_path):
    from growdsl.runtime.trainer import Trainer

    folder = tmp_path / "m"
    shutil.copytree(plain, folder)
    text = f'model from "{folder}"\nseq 32\nbatch 4 seqs\nwarmup 1 step\nval off\ncheckpoint every 2 steps\n'
    plan = plan_source(text + "stack x2\ntrain 6 steps\n")
    whole = Trainer(plan, data_dir, log=lambda _: None).run()

    def dies(line: str) -> None:
        if "step 3/6" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(plan, data_dir, log=dies, log_every=1, checkpoint_dir=tmp_path / "ck").run()
    shutil.rmtree(folder)  # gone: the checkpoint holds all a resume needs
    resumed = Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path / "ck", resume=True).run()
    assert resumed[0].losses == whole[0].losses[2:]


def test_the_baseline_of_a_grown_model_computes_its_rope_and_keeps_its_rows(plain, errors):
    from growdsl.plan.baseline import planned

    plan = plan_source(f'model from "{plain}"\nseq 32\nbatch 4 seqs\nwarmup 1 step\nstack x2\ntrain 6 steps\n')
    text, written = planned(plan, None, "g.grow", None)
    assert " padded rope_scaling none 256\n" in text
    from dataclasses import replace

    assert written.stages[0].shape == replace(plan.stages[0].shape, vocab_padded=True)  # the same model, new
    shape = plan_source("model tiny rope_scaling linear 4 1024\ntrain 2L for 9 steps\n").stages[0].shape
    assert (shape.rope_scaling.kind, shape.rope_scaling.factor) == ("linear", 4.0)
    assert errors("model tiny rope_scaling llama3 8\ntrain 2L for 9 steps\n")[0].message == (
        "rope_scaling llama3 takes 4 numbers"
    )
    assert errors("model tiny rope_scaling yarn\ntrain 2L for 9 steps\n")[0].message == "unknown RoPE scaling 'yarn'"


def test_a_growdsl_run_is_a_model_to_start_from_with_its_recorded_cost(data_dir, tmp_path, capsys):
    from ops_helpers import TINY_RUN

    from growdsl.cli import main
    from growdsl.eval.checkpoints import load
    from growdsl.plan import plan_file
    from growdsl.runtime.trainer import RunError, Trainer

    first = tmp_path / "small.grow"
    first.write_text(TINY_RUN + "val off\ntrain 2L for 5 steps\n")
    assert main(["run", str(first), "--data", str(data_dir), "--run-dir", str(tmp_path / "small")]) == 0
    small = load(tmp_path / "small")
    schedule = tmp_path / "grow.grow"
    settings = TINY_RUN.split("\n", 1)[1]  # the tiny run's, without its model statement
    schedule.write_text('model from "small"\n' + settings + "val off\nstack x2\ntrain 4 steps\n")
    plan = plan_file(schedule)
    assert plan.start.kind == "run" and plan.start.folder == str(small.path)
    assert (plan.start.tokens, plan.start.flops) == (small.progress.position, small.progress.flops)
    assert plan.totals.flops == small.progress.flops + plan.stages[0].flops
    trainer = Trainer(plan, data_dir, log=lambda _: None)
    trainer.start()
    with torch.no_grad():
        assert torch.equal(trainer.model(trainer.probe), small.model(trainer.probe))
    assert main(["plan", str(schedule)]) == 0
    assert "small: a growdsl checkpoint (2L" in capsys.readouterr().out
    (small.path / "progress.json").write_text((small.path / "progress.json").read_text().replace('"step"', '"step" '))
    with pytest.raises(RunError, match="progress.json has 2,[0-9]{3} bytes, not the"):  # verified before use
        Trainer(plan, data_dir, log=lambda _: None).start()


@pytest.fixture(scope="module")
def small_run(data_dir, tmp_path_factory):
    """A tiny growdsl run with two checkpoints, to start from."""
    from ops_helpers import TINY_RUN

    from growdsl.cli import main

    root = tmp_path_factory.mktemp("small")
    (root / "small.grow").write_text(TINY_RUN + "val off\ncheckpoint every 3 steps\ntrain 2L for 6 steps\n")
    assert main(["run", str(root / "small.grow"), "--data", str(data_dir), "--run-dir", str(root / "small")]) == 0
    return root / "small"


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("n_layers", 10**9, "describes no model growdsl builds: 1000000000 layers"),
        ("n_heads", 0, "describes no model growdsl builds"),
        ("stage", -1, "does not describe a model"),
        ("flops", 10**40, "does not describe a model"),
    ],
)
def test_a_crafted_run_record_is_one_line_and_allocates_nothing(small_run, tmp_path, field, value, said):
    from growdsl.plan.imported import read_run

    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    ckpt = sorted((copy / "checkpoints").iterdir())[-1]
    progress = json.loads((ckpt / "progress.json").read_text())
    if field in ("stage", "flops"):
        progress[field] = value
    else:
        progress["plan_prefix"][progress["stage"]]["shape"][field] = value
    (ckpt / "progress.json").write_text(json.dumps(progress))
    with pytest.raises(ModelFolderError, match=said):
        read_run(copy)


def test_a_run_to_start_from_is_read_only_from_plain_files(small_run, tmp_path):
    """Its tensors are read when the run loads it: a link inside it could lead anywhere."""
    from growdsl.plan.imported import read_run

    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    tensors = next((sorted((copy / "checkpoints").iterdir())[-1]).glob("*.distcp"))
    elsewhere = tmp_path / "elsewhere.distcp"
    tensors.rename(elsewhere)
    tensors.symlink_to(elsewhere)
    with pytest.raises(ModelFolderError, match=f"{tensors} is a symbolic link"):
        read_run(copy)


def test_a_resume_refuses_a_start_that_moved_on_and_hints_name_the_run(small_run, data_dir, tmp_path, errors):
    from ops_helpers import TINY_RUN

    from growdsl.plan.data import vocab_problem
    from growdsl.runtime.trainer import RunError, Trainer

    source = tmp_path / "source"
    shutil.copytree(small_run, source)
    first = sorted((source / "checkpoints").iterdir())[0]
    shutil.rmtree(sorted((source / "checkpoints").iterdir())[-1])  # its newest is now the first
    settings = TINY_RUN.split("\n", 1)[1] + "val off\ncheckpoint every 2 steps\n"
    plan = plan_source(f'model from "{source}"\n' + settings + "stack x2\ntrain 4 steps\n")
    assert plan.start.folder == str(first) and plan.start.tokenizer_folder == str(source)
    with pytest.raises(KeyboardInterrupt):
        Trainer(plan, data_dir, log=kill_at("step 3/4"), log_every=1, checkpoint_dir=tmp_path / "ck").run()
    shutil.copytree(small_run / "checkpoints" / sorted(p.name for p in (small_run / "checkpoints").iterdir())[-1],
                    source / "checkpoints" / "ckpt-000099")  # fmt: skip
    moved_on = plan_source(f'model from "{source}"\n' + settings + "stack x2\ntrain 4 steps\n")
    with pytest.raises(RunError, match="the schedule starts from another model"):
        Trainer(moved_on, data_dir, log=lambda _: None, checkpoint_dir=tmp_path / "ck", resume=True).start()
    named = plan_source(f'model from "{first}"\n' + settings + "stack x2\ntrain 4 steps\n")
    Trainer(named, data_dir, log=lambda _: None, checkpoint_dir=tmp_path / "ck", resume=True).start()
    assert f"--tokenizer {source})" in vocab_problem(plan, 10**6)
    said = errors(f'model from "{source / "checkpoints"}"\ntrain 4 steps\n')
    assert "holds a run's checkpoints: name the run (its parent) or one checkpoint" in said[0].message


def kill_at(fragment: str):
    def log(line: str) -> None:
        if fragment in line:
            raise KeyboardInterrupt

    return log


def hf_mixtral(folder: Path, *, experts=4, top_k=2, layers=2, seed=0) -> Path:
    """A small random Mixtral saved as transformers saves it (its experts one tensor each, per expert)."""
    torch.manual_seed(seed)
    config = transformers.MixtralConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=400, rope_theta=10000.0, max_position_embeddings=256, rms_norm_eps=1e-5,
        num_local_experts=experts, num_experts_per_tok=top_k, sliding_window=None, router_jitter_noise=0.0,
    )  # fmt: skip
    transformers.MixtralForCausalLM(config).save_pretrained(str(folder))
    return folder


def test_a_hugging_face_mixtral_plans_trains_resumes_and_exports_back(data_dir, tmp_path, capsys):
    """`model from` a Mixtral: its experts planned (total and active parameters), its logits transformers',
    trained on with FSDP2's layout on one process, resumed exactly, exported back with transformers' logits."""
    from growdsl.cli import main
    from growdsl.plan import plan_source

    folder = hf_mixtral(tmp_path / "mixtral")
    plan = plan_source(f'model from "{folder}"\nseq 32\nbatch 4 seqs\nwarmup 1 step\nval off\ntrain 6 steps\n')
    shape = plan.start.shape
    assert (shape.experts.count, shape.experts.top_k, shape.experts.every) == (4, 2, 1)
    hf = transformers.MixtralForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    assert shape.params == sum(p.numel() for p in hf.parameters())
    assert shape.active_params == shape.params - 2 * 2 * 3 * 64 * 96  # two of the four experts a token, 2 blocks
    schedule = tmp_path / "s.grow"
    settings = "seq 32\nbatch 4 seqs\nwarmup 1 step\nval off\ncheckpoint every 3 steps\n"
    schedule.write_text(f'model from "{folder}"\n{settings}train 6 steps\n')
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run), "--until", "3"]) == 0
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run), "--resume"]) == 0
    resumed = [json.loads(line)["loss"] for line in (run / "history.jsonl").read_text().splitlines()]
    whole = tmp_path / "whole"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(whole)]) == 0
    assert resumed == [json.loads(line)["loss"] for line in (whole / "history.jsonl").read_text().splitlines()]
    assert main(["export", str(run), "--hf", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "mixtral"
    assert_exported_logits(run, out, transformers.MixtralForCausalLM)
    capsys.readouterr()
    grows = tmp_path / "g.grow"
    grows.write_text(f'model from "{folder}"\ntrain 6 steps\nstack x2\ntrain 6 steps\n')
    assert main(["validate", str(grows)]) == 1
    assert "growdsl grows dense models" in capsys.readouterr().err
