"""Evaluation and export on a tiny grown run: the lm-eval adapter's numbers equal a direct
computation, local tasks run through lm-eval offline end to end, in-run evaluation writes its
results, and the Hugging Face export gives transformers the same logits."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import TINY_RUN

from growdsl.cli import main
from growdsl.eval import benchmarks
from growdsl.eval.checkpoints import LoadError, find, load
from growdsl.eval.evaluate import run_tasks
from growdsl.eval.lm import GrowLM
from growdsl.plan.tasks import EVAL_TASKS

SCHEDULE = (
    TINY_RUN
    + """seed 7
eval tasks "heldout arc_easy"
eval at growth
eval at end
train 1L for 15 steps
stack x2
train 15 steps
"""
)

ARC = [  # two questions in ai2_arc's layout
    {
        "id": "q1",
        "question": "w1 w2 w3",
        "choices": {"text": ["w4 w5", "w6", "w7 w8 w9"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    },
    {"id": "q2", "question": "w10", "choices": {"text": ["w11", "w12"], "label": ["A", "B"]}, "answerKey": "A"},
]


@pytest.fixture(scope="module")
def bench_home(tmp_path_factory):
    """Local benchmark files (no fetch): a two-question ARC-Easy."""
    home = tmp_path_factory.mktemp("benchmarks")
    (home / "arc_easy.jsonl").write_text("".join(json.dumps(d) + "\n" for d in ARC))
    return home


@pytest.fixture(scope="module")
def run_dir(data_dir, bench_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    schedule = root / "s.grow"
    schedule.write_text(SCHEDULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(benchmarks, "HOME", bench_home)
        assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def direct_logprob(model, context: list[int], continuation: list[int]) -> float:
    tokens = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = F.log_softmax(model(tokens[:, :-1]).double(), -1)[0]
    return sum(logp[len(context) - 1 + i, t].item() for i, t in enumerate(continuation))


def test_loglikelihood_equals_a_direct_computation(run_dir):
    trained = load(run_dir)
    lm = GrowLM(trained.model, trained.tokenizer, trained.eot_id, trained.seq_len, batch_size=3)
    pairs = [("w1 w2 w3", " w4"), ("w5", " w6 w7 w8"), ("", "w9 w10"), ("w11 w12 ", "w13")]
    requests = [type("Request", (), {"args": p}) for p in pairs]
    got = lm.loglikelihood(requests)
    for (context, continuation), (logprob, _) in zip(pairs, got):
        ctx, cont = lm.encode_pair(context, continuation)
        assert logprob == pytest.approx(direct_logprob(trained.model, ctx, cont), abs=1e-4)
    assert lm.encode_pair("", "w9")[0] == [trained.eot_id]
    assert lm.encode_pair("w11 w12 ", "w13") == lm.encode_pair("w11 w12", " w13")  # the space moves over

    # rolling: a text longer than the window is scored whole, every token once
    text = " ".join(f"w{i % 150}" for i in range(200))
    ids = lm.encode(text)
    assert len(ids) > 2 * trained.seq_len
    (rolling,) = lm.loglikelihood_rolling([type("Request", (), {"args": (text,)})])
    expected, position = 0.0, 0
    while position < len(ids):  # disjoint windows, each with as much preceding context as fits
        end = min(position + trained.seq_len, len(ids))
        window = ([trained.eot_id] + ids)[max(0, end - trained.seq_len) : end + 1]
        n = end - position
        expected += direct_logprob(trained.model, window[:-n], window[-n:])
        position = end
    assert rolling == pytest.approx(expected, abs=1e-3)


def test_generate_until_decodes_greedily_and_stops_at_a_stop_string(run_dir):
    trained = load(run_dir)
    lm = GrowLM(trained.model, trained.tokenizer, trained.eot_id, trained.seq_len)
    context = "w1 w2 w3"
    ids, new = lm.encode(context), []
    with torch.no_grad():
        for _ in range(8):  # argmax by hand
            token = int(trained.model(torch.tensor([ids + new]))[0, -1].argmax())
            if token == trained.eot_id:
                break
            new.append(token)
    text = trained.tokenizer.decode(new)
    assert len(text) > 4
    ask = lambda until: type("Request", (), {"args": (context, {"until": until, "max_gen_toks": 8})})  # noqa: E731
    stop = text[-3:]
    assert lm.generate_until([ask([]), ask([stop])]) == [text, text.split(stop)[0]]


def test_local_tasks_run_through_lm_eval_offline(run_dir, data_dir, bench_home):
    trained = load(run_dir)
    lm = GrowLM(trained.model, trained.tokenizer, trained.eot_id, trained.seq_len)
    results = run_tasks(lm, ["arc_easy", "heldout"], data_dir / "val.jsonl", benchmarks_home=bench_home)
    # ARC accuracy by hand: the choice with the highest log-likelihood after "Question: ...\nAnswer:"
    correct = 0
    for doc in ARC:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = [direct_logprob(trained.model, *lm.encode_pair(context, " " + c)) for c in doc["choices"]["text"]]
        correct += scores.index(max(scores)) == doc["choices"]["label"].index(doc["answerKey"])
    assert results["arc_easy"]["acc"] == correct / len(ARC)
    assert results["arc_easy"]["samples"] == 2
    held = results["heldout"]
    assert 0 < held["bits_per_byte"] < 8
    assert held["byte_perplexity"] == pytest.approx(2 ** held["bits_per_byte"])


def test_the_schedule_evaluates_at_growth_and_end(run_dir):
    files = sorted(p.name for p in (run_dir / "eval").iterdir())
    assert files == ["stage0-step15.json", "stage1-step15.json"]
    end = json.loads((run_dir / "eval" / "stage1-step15.json").read_text())
    assert end["layers"] == 2 and set(end["results"]) == {"heldout", "arc_easy"}
    events = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    evals = [e for e in events if e.get("event") == "eval"]
    assert [e["step"] for e in evals] == [15, 30]  # global steps
    assert evals[1]["results"] == end["results"]
    assert evals[1]["flops"] == end["flops"]


def test_a_resume_scores_the_evaluation_a_killed_run_owed(run_dir, data_dir, bench_home, tmp_path, monkeypatch):
    """Killed after the end's checkpoint and before its scores were written: `--resume` scores it
    (the same numbers), where it used to say the run was already complete."""
    import shutil

    monkeypatch.setattr(benchmarks, "HOME", bench_home)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    end = json.loads((copy / "eval" / "stage1-step15.json").read_text())
    (copy / "eval" / "stage1-step15.json").unlink()
    schedule = str(copy / "schedule.grow")
    assert main(["run", schedule, "--data", str(data_dir), "--run-dir", str(copy), "--resume"]) == 0
    again = json.loads((copy / "eval" / "stage1-step15.json").read_text())
    assert again["results"] == end["results"] and again["flops"] == end["flops"]
    assert "its evaluation was never written" in (copy / "log.txt").read_text()


def test_eval_command_scores_a_checkpoint(run_dir, bench_home, capsys, monkeypatch):
    monkeypatch.setattr(benchmarks, "HOME", bench_home)
    first = sorted((run_dir / "checkpoints").iterdir())[0]
    assert main(["eval", str(first), "--tasks", "arc_easy"]) == 0
    out = capsys.readouterr().out
    assert "arc_easy" in out and "acc" in out
    saved = json.loads((run_dir / "eval" / "stage0-end.json").read_text())
    assert saved["checkpoint"] == first.name and saved["layers"] == 1


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(LoadError, match="neither a checkpoint nor a run directory"):
        find(tmp_path)
    assert main(["eval", str(tmp_path)]) == 2
    assert "growdsl eval:" in capsys.readouterr().err


def test_every_named_task_has_a_definition():
    shipped = {p.stem for p in benchmarks.TASKS_DIR.glob("*.yaml")}
    assert shipped == set(EVAL_TASKS)
    assert set(benchmarks.SOURCES) == set(EVAL_TASKS) - {"heldout"}


def test_hf_export_round_trips_logits(run_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--hf", str(out)]) == 0
    trained = load(run_dir)
    tokens = torch.tensor([trained.tokenizer.encode("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10").ids])
    heard = []
    listener = logging.Handler(logging.WARNING)
    listener.emit = heard.append
    logging.getLogger("transformers").addHandler(listener)
    try:
        with torch.no_grad():
            ours = trained.model(tokens)
            hf = transformers.LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
            theirs = hf(tokens).logits
    finally:
        logging.getLogger("transformers").removeHandler(listener)
    assert not heard, [r.getMessage() for r in heard]  # transformers takes our config.json silently
    assert (ours - theirs).abs().max().item() < 1e-4 * ours.abs().max().item()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("w1 w2 w3")["input_ids"] == trained.tokenizer.encode("w1 w2 w3").ids
    card = (out / "README.md").read_text()
    assert 'stack "1*2" (direct): 1 -> 2 layers, map 0 each x2' in card and "stack x2" in card


def test_export_never_writes_into_a_folder_in_use(run_dir, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir), "--hf", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_prompts_are_lm_evals_own():
    """prompts.py renders exactly what lm-eval 0.4's Jinja templates for these tasks render."""
    import importlib.util

    from lm_eval.utils import apply_template

    spec = importlib.util.spec_from_file_location("prompts", benchmarks.TASKS_DIR / "prompts.py")
    prompts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prompts)
    piqa = {"goal": "Open a jar?", "sol1": "Twist the lid.", "sol2": "Shake it.", "label": 0}
    sciq = {
        "support": "  Cells divide.\nOften.",
        "question": "What divides?",
        "distractor1": "rocks",
        "distractor2": "air",
        "distractor3": "light",
        "correct_answer": "cells",
    }
    lambada = {"text": "He looked at the  sky and saw the moon"}
    official = [
        (ARC[0], "Question: {{question}}\nAnswer:", prompts.arc_text),
        (ARC[0], "{{choices.text}}", prompts.arc_choices),
        (ARC[0], "{{choices.label.index(answerKey)}}", prompts.arc_target),
        (piqa, "Question: {{goal}}\nAnswer:", prompts.piqa_text),
        (piqa, "{{[sol1, sol2]}}", prompts.piqa_choices),
        (sciq, "{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:", prompts.sciq_text),
        (sciq, "{{[distractor1, distractor2, distractor3, correct_answer]}}", prompts.sciq_choices),
        (lambada, "{{text.split(' ')[:-1]|join(' ')}}", prompts.lambada_text),
        (lambada, "{{' '+text.split(' ')[-1]}}", prompts.lambada_target),
    ]
    for doc, template, ours in official:
        assert str(ours(doc)) == apply_template(template, doc), template
