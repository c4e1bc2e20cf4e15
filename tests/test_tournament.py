"""The operator tournament: `try A | B | C for PROBE` plans every candidate from one base, and
`growdsl tournament` trains the base once, probes each arm at equal FLOPs, ranks them by validation
loss and writes a winner's schedule that runs on from the winner's own run."""

import json
import shutil

import pytest
from ops_helpers import TINY_RUN

from growdsl.cli import main
from growdsl.lang.errors import ScheduleError
from growdsl.lang.parser import parse_partial
from growdsl.plan import plan_source
from growdsl.plan.plan import stage_record
from growdsl.plan.tournament import tournament_of

SCHEDULE = TINY_RUN + (
    "val every 4 steps\nval tokens 512\n"
    "train 2L for 12 steps\n"
    "try stack x2 | stack x2 init zero | interpolate x2 | stack x2 init learn 2 steps for 6 steps\n"
    "train 20 steps\n"
)


def tournament(text: str):
    return tournament_of(parse_partial(text, "t.grow"))


def errors(text: str) -> list[str]:
    with pytest.raises(ScheduleError) as e:
        tournament(text)
    return [f"{d.span.line}:{d.span.col} {d.message}" for d in e.value.errors]


def test_every_candidate_plans_as_its_own_schedule_from_one_base():
    t = tournament(SCHEDULE)
    assert [a.candidate for a in t.arms] == [
        "stack x2",
        "stack x2 init zero",
        "interpolate x2",
        "stack x2 init learn 2 steps",
    ]
    assert (t.line, t.base_stages, t.base_steps, t.probe_stated) == (9, 1, 12, 6)
    for arm in t.arms:  # the try replaced, every line kept: the arm's text plans as the tournament planned it
        assert arm.source.splitlines()[8] == arm.candidate and len(arm.source.splitlines()) == 10
        assert plan_source(arm.source).stages == arm.plan.stages
        assert stage_record(arm.plan.stages[0]) == stage_record(t.arms[0].plan.stages[0])
    assert [a.plan.stages[1].growths[0].operator for a in t.arms] == ["direct", "zero", "direct", "learn"]
    # equal FLOPs after the growth: the learned map's 2 steps cost 2 of its probe steps
    assert [a.stop_step for a in t.arms] == [18, 18, 18, 16]
    per_step = t.arms[0].plan.stages[1].flops_per_token * 4 * 32
    assert t.probe_flops == 6 * per_step
    learn = t.arms[3].plan.stages[1].growths[0].learn
    assert learn.flops <= 2 * per_step
    assert [a.folder for a in t.arms][3] == "4-stack-x2-init-learn-2-steps"


def test_a_schedule_without_try_has_no_tournament_and_one_with_it_is_no_plain_schedule():
    assert tournament(TINY_RUN + "train 2L for 10 steps") is None
    with pytest.raises(ScheduleError) as e:
        plan_source(SCHEDULE)
    assert "growdsl tournament" in e.value.errors[0].hint


def test_mistakes_in_a_tournament_are_said_where_they_are_written():
    base = TINY_RUN + "train 2L for 12 steps\n"
    assert errors(base + "try stack x2 | stack x2 init bogus for 4 steps\ntrain 20 steps")[0].startswith("7:30 ")
    assert errors(base + "try stack x2 | stack x2 for 4 steps\ntrain 20 steps") == [
        "7:16 the candidate 'stack x2' is tried twice"
    ]
    assert errors(base + "try stack x2 | stack x3 for 4 steps\ntrain 20 steps")[0].startswith(
        "7:1 'stack x3' grows a 6L"
    )
    assert errors(base + "try stack x2 | stack x2 lr continue for 4 steps\ntrain 20 steps")[0].startswith(
        "7:1 'stack x2 lr continue' trains the base otherwise"
    )
    assert errors(base + "try stack x2 | interpolate x2 for 40 steps\ntrain 20 steps") == [
        "7:35 the probe (40 steps) is longer than the stage after the growth (20 steps)"
    ]
    assert errors(base + "try stack x2 | interpolate x2 for 4 steps\ntrain 20 steps with val off") == [
        "7:1 the stage after the try has val off: a tournament ranks by validation loss"
    ]
    (alone,) = parse_partial(base + "try stack x2 for 4 steps\ntrain 20 steps", "t.grow").syntax_errors
    assert "two candidates or more" in (alone.hint or "")
    again = "try stack x2 | interpolate x2 for 4 steps\n"
    two = base + again + "train 20 steps\n" + again + "train 5 steps"
    assert errors(two) == ["9:1 a schedule holds one tournament: this is a second try"]


def test_plan_shows_the_tournament_and_run_refuses_it(tmp_path, capsys):
    path = tmp_path / "t.grow"
    path.write_text(SCHEDULE)
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tournament     line 9: 4 candidates grow one base (trained 12 steps) into 4L · dim 32" in out
    assert "  4  stack x2 init learn 2 steps (4 steps after its learned map): line 9: stack" in out
    assert main(["validate", str(path)]) == 0
    assert main(["plan", str(path), "--json"]) == 0
    assert "a tournament: the plan of its first candidate (stack x2)" in capsys.readouterr().err
    assert main(["fit", str(path), "--gpus", "1", "--memory", "80"]) == 0  # each candidate is a run of its own
    assert "candidate 4: stack x2 init learn 2 steps\n" in capsys.readouterr().out
    assert main(["run", str(path)]) == 2
    assert "holds a tournament (try, line 9): run it with growdsl tournament" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_tournament_ranks_its_arms_and_its_winner_runs_on(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.grow"
    # three operators, and a learned map at an LR that makes its weights overflow: it diverges, and loses
    path.write_text(SCHEDULE.replace("init learn 2 steps ", "init learn 2 steps at lr 1e4 "))
    folder = tmp_path / "tour"
    assert main(["tournament", str(path), "--data", str(data_dir), "--dir", str(folder)]) == 0
    out = capsys.readouterr().out
    record = json.loads((folder / "tournament.json").read_text())
    results = record["results"]
    assert [r["number"] for r in results][-1] == 4 and results[-1]["loss"] is None  # diverged: last
    assert "arm 4 diverged at step 13: it is ranked last, the tournament goes on" in out
    finished = results[:3]
    assert sorted(r["number"] for r in finished) == [1, 2, 3]
    assert [r["loss"] for r in finished] == sorted(r["loss"] for r in finished)
    assert len({r["flops"] for r in finished}) == 1 and {r["step"] for r in finished} == {18}  # equal FLOPs
    # the base trained once: every arm's history starts with the base's, line for line
    base = (folder / "base" / "history.jsonl").read_text()
    arms = [a["folder"] for a in record["arms"]]
    for arm in arms:
        assert (folder / arm / "history.jsonl").read_text().startswith(base)
    assert len({(folder / a / "history.jsonl").read_text()[len(base) :] for a in arms}) == 4  # grown apart
    winner = next(a for a in record["arms"] if a["number"] == results[0]["number"])
    assert f"winner: {winner['candidate']}" in out and (folder / "ranking.png").stat().st_size > 0
    text = (tmp_path / "t.winner.grow").read_text()
    assert text == (folder / "winner.grow").read_text() and f"{winner['candidate']}  # the winner" in text
    assert "try" not in text.split("#")[0]
    # resumed: nothing trains again (the diverged arm neither), the ranking stands; an arm that never
    # began is copied from the base and probed as the others were
    third = folder / arms[2] / "history.jsonl"

    def losses() -> list:
        return [(r.get("event"), r["step"], r.get("loss")) for r in map(json.loads, third.read_text().splitlines())]

    probed = losses()
    shutil.rmtree(folder / arms[2])
    assert main(["tournament", str(path), "--data", str(data_dir), "--dir", str(folder), "--resume"]) == 0
    assert json.loads((folder / "tournament.json").read_text())["results"] == results
    assert losses() == probed
    # a changed schedule does not resume: its arms would be probed under other settings
    path.write_text(path.read_text().replace("train 20 steps", "train 20 steps with clip 0.5"))
    assert main(["tournament", str(path), "--data", str(data_dir), "--dir", str(folder), "--resume"]) == 2
    assert "ran another schedule" in capsys.readouterr().err
    # the winner's schedule goes on from the winner's run, to its end
    run_dir = folder / winner["folder"]
    assert (
        main(["run", str(tmp_path / "t.winner.grow"), "--run-dir", str(run_dir), "--resume", "--data", str(data_dir)])
        == 0
    )
    last = json.loads((run_dir / "history.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 32


def test_a_tournament_that_grows_the_model_it_starts_from(tmp_path):
    from test_recipes import header_only_llama

    header_only_llama(tmp_path / "base", 2)  # Llama-2-7B's width, 2 layers: planned, never loaded
    text = f'model from "{tmp_path / "base"}" trained 2B\nbatch 4 seqs\nseq 32\n'
    t = tournament(text + "try stack x2 | interpolate x2 for 5 steps\ntrain 20 steps\n")
    assert (t.base_stages, t.base_steps) == (0, 0) and [a.stop_step for a in t.arms] == [5, 5]
    assert t.flops == 2 * t.probe_flops  # the model it starts from trains nothing here


def test_a_refused_tournament_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.grow"
    path.write_text(SCHEDULE)
    assert main(["tournament", str(path), "--data", str(tmp_path / "missing"), "--dir", str(tmp_path / "tour")]) != 0
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "tour").exists()
