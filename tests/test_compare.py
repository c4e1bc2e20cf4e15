"""`growdsl compare` on synthetic runs whose answer is known."""

import json
import re

import numpy as np
import pytest

from growdsl.cli import main
from growdsl.eval.compare import CompareError, compare, compute_to_reach, read_run


def write_run(
    path, flops, loss, growth_at=None, evals=None, val=None, val_every=10, val_tokens=4096, limit=None, val_data="a"
):
    """A history.jsonl: a line a step; `val(flops) -> loss` measured every `val_every` steps."""
    path.mkdir(parents=True)
    lines = [
        {"step": i + 1, "tokens": 1000 * (i + 1), "flops": int(f), "loss": float(v), "lr": 1e-3}
        for i, (f, v) in enumerate(zip(flops, loss))
    ]
    if val is not None:
        for i in range(val_every - 1, len(flops), val_every):
            lines.insert(
                lines.index(next(x for x in lines if x.get("step") == i + 1)) + 1,
                {
                    "event": "val",
                    "step": i + 1,
                    "tokens": 1000 * (i + 1),
                    "flops": int(flops[i]),
                    "loss": float(val(flops[i])),
                    "val_tokens": val_tokens,
                    "val_data": val_data,
                    "val_flops": 1,
                    "seconds": 0.1,
                },
            )
    if growth_at is not None:
        lines.insert(
            growth_at,
            {
                "event": "growth",
                "step": growth_at,
                "tokens": 1000 * growth_at,
                "flops": int(flops[growth_at - 1]),
                "text": "stack x2",
            },
        )
    if evals:
        lines.append(
            {
                "event": "eval",
                "step": len(loss),
                "tokens": 1000 * len(loss),
                "flops": int(flops[-1]),
                "results": evals,
                **({"limit": limit} if limit else {}),
            }
        )
    (path / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_a_run_that_reaches_every_loss_with_half_the_compute_is_a_100_percent_speedup(tmp_path):
    flops = np.arange(1, 401) * 1e9
    scratch = write_run(tmp_path / "scratch", flops, 10 - flops / 1e11)  # linear in FLOPs: interpolation is exact
    grown = write_run(tmp_path / "grown", flops, 10 - 2 * flops / 1e11, growth_at=100, evals={"arc_easy": {"acc": 0.3}})
    report = compare([scratch, grown], tmp_path / "out", smooth=1)
    assert len(report.levels) == 5
    for i in range(5):
        assert report.speedup(i, 1) == pytest.approx(1.0, rel=1e-9)
    assert report.levels[-1] == pytest.approx(10 - 4.0)  # down to the baseline's lowest loss
    for plot in report.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in report.plots) == ["loss_vs_flops.png", "loss_vs_tokens.png", "scores.png"]


def test_a_run_that_never_gets_there_says_so(tmp_path, capsys):
    flops = np.arange(1, 201) * 1e9
    scratch = write_run(tmp_path / "scratch", flops, 10 - flops / 1e11)
    worse = write_run(tmp_path / "worse", flops, 10 - flops / 2e11)  # half as fast: -50%, then never
    report = compare([scratch, worse], tmp_path / "out", smooth=1)
    assert report.speedup(0, 1) == pytest.approx(-0.5, rel=1e-9)
    assert report.speedup(4, 1) is None
    assert main(["compare", str(scratch), str(worse), "--out", str(tmp_path / "o2"), "--smooth", "1"]) == 0
    out = capsys.readouterr().out
    assert "not reached" in out and "-50.0%" in out


def test_smoothing_counts_a_level_only_when_the_average_reaches_it():
    loss = np.array([5.0, 1.0, 5.0, 5.0, 1.0, 1.0])  # one lucky batch at step 2
    flops = np.arange(1, 7, dtype=float)
    assert compute_to_reach(flops, loss, 1.0) == 2.0
    from growdsl.eval.compare import Curve

    smoothed = Curve("x", flops, flops, flops, loss).smoothed(2)
    assert list(smoothed) == [5.0, 3.0, 3.0, 5.0, 3.0, 1.0]
    assert compute_to_reach(flops, smoothed, 1.0) == 6.0


def test_a_resumed_run_counts_each_step_once(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    lines = [
        {"step": s, "tokens": s, "flops": s, "loss": v} for s, v in [(1, 3.0), (2, 2.0), (3, 9.0), (2, 2.5), (3, 1.5)]
    ]
    (run / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    curve = read_run(run)
    assert list(curve.loss) == [3.0, 2.5, 1.5]


def test_not_a_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(CompareError, match="no history.jsonl"):
        read_run(tmp_path)
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "growdsl compare:" in capsys.readouterr().err


def test_validation_loss_is_the_yardstick_when_every_run_has_it(tmp_path, capsys):
    flops = np.arange(1, 401) * 1e9
    noise = np.random.default_rng(0).normal(0, 0.5, 400)  # noisy training losses that say the opposite
    scratch = write_run(tmp_path / "scratch", flops, 10 - 2 * flops / 1e11 + noise, val=lambda f: 10 - f / 1e11)
    grown = write_run(tmp_path / "grown", flops, 10 - flops / 1e11 + noise, val=lambda f: 10 - 2 * f / 1e11)
    report = compare([scratch, grown], tmp_path / "out")
    assert report.yardstick == "validation" and report.window == 1
    assert report.levels[0] == pytest.approx(10 - 50e9 / 1e11)  # measurement 4 of 0..39 (step 50): a tenth in
    assert report.levels[-1] == pytest.approx(10 - 4.0)  # the baseline's final validation loss
    for i in range(5):
        assert report.speedup(i, 1) == pytest.approx(1.0, rel=1e-9)  # half the compute at every level
    assert main(["compare", str(scratch), str(grown), "--out", str(tmp_path / "o2")]) == 0
    out = capsys.readouterr().out
    assert "loss: validation loss (4,096 held-out tokens)" in out
    assert "   L5    6.0000" in out and "+100.0%" in out
    assert "final validation loss: scratch 6.0000  grown 2.0000" in out


@pytest.mark.parametrize("case", ["missing", "different sets", "different data"])
def test_without_comparable_validation_loss_compare_falls_back_to_training_loss_and_says_why(tmp_path, case):
    flops = np.arange(1, 201) * 1e9
    scratch = write_run(tmp_path / "scratch", flops, 10 - flops / 1e11, val=lambda f: 10 - f / 1e11)
    other = {
        "missing": dict(val=None),
        "different sets": dict(val=lambda f: 10 - f / 1e11, val_tokens=8192),
        "different data": dict(val=lambda f: 10 - f / 1e11, val_data="b"),
    }[case]
    grown = write_run(tmp_path / "grown", flops, 10 - 2 * flops / 1e11, **other)
    report = compare([scratch, grown], tmp_path / "out", smooth=1)
    assert report.yardstick == "training" and report.speedup(0, 1) == pytest.approx(1.0, rel=1e-9)
    assert (
        report.why
        == {
            "missing": "grown measured no validation loss",
            "different sets": "the runs measured validation loss on different numbers of held-out "
            "tokens (scratch 4,096, grown 8,192)",
            "different data": "the runs measured validation loss on different held-out data",
        }[case]
    )


def test_scores_note_limited_and_unequal_evaluations(tmp_path, capsys):
    flops = np.arange(1, 101) * 1e9
    a = write_run(
        tmp_path / "a",
        flops,
        10 - flops / 1e11,
        evals={"arc_easy": {"acc": 0.3}, "heldout": {"bits_per_byte": 2.5}},
        limit=50,
    )
    b = write_run(tmp_path / "b", flops, 10 - flops / 1e11, evals={"arc_easy": {"acc": 0.35}})
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "o"), "--smooth", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("note: a was scored on the first 50 documents of arc_easy, heldout (--limit)") == 1
    assert "note: the runs were scored on different tasks: a: arc_easy, heldout; b: arc_easy" in out
    assert (tmp_path / "o" / "scores.png").read_bytes()[:4] == b"\x89PNG"


def test_a_broken_history_line_is_named(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "history.jsonl").write_text('{"step": 1, "tokens": 1, "flops": 1, "loss": 2.0}\nnot json\n')
    with pytest.raises(CompareError, match=r"history.jsonl:2: not a history record"):
        read_run(run)


@pytest.mark.parametrize(
    "bad, problem",
    [
        ('{"step": 3, "tokens": 3, "flops": Infinity, "loss": 1.0}', "flops: input should be a valid integer"),
        ('{"step": "3", "tokens": 3, "flops": 3, "loss": 1.0}', "step: input should be a valid integer"),
        ('{"event": "growth", "step": 3, "text": "x"}', "tokens: field required"),
        ('{"event": "eval", "step": 3, "results": [1, 2]}', "results: input should be an object"),
        ('{"event": "eval", "step": 3, "results": {"hellaswag": {"acc": "high"}}}', "results.hellaswag.acc: input"),
        ('{"event": "eval", "step": 3}', "results: field required"),
        (
            '{"event": "val", "step": 3, "tokens": 3, "flops": 3, "loss": 2.0, "val_tokens": "many"}',
            "val_tokens: input should be a valid integer",
        ),
        ('{"event": "party", "step": 3}', "unknown event 'party'"),
        ("[1, 2]", "the record: input should be an object"),
        ("{not json", "not JSON"),
    ],
)
def test_every_malformed_history_line_is_an_error_naming_it(tmp_path, bad, problem):
    run = tmp_path / "r"
    run.mkdir()
    good = "".join(json.dumps({"step": s, "tokens": s, "flops": s, "loss": 2.0}) + "\n" for s in (1, 2))
    (run / "history.jsonl").write_text(good + bad + "\n")
    with pytest.raises(CompareError, match=r"history.jsonl:3: not a history record \(" + re.escape(problem)):
        read_run(run)


def test_a_whole_task_score_wins_over_a_limited_one_at_the_same_step(tmp_path):
    from growdsl.eval.compare import final_scores, read_run

    run = tmp_path / "r"
    run.mkdir()
    lines = [{"step": s, "tokens": s, "flops": s, "loss": 2.0} for s in (1, 2)]
    lines += [
        {"event": "eval", "step": 2, "results": {"heldout": {"bits_per_byte": 2.5}}},  # the schedule's, whole
        {"event": "eval", "step": 2, "results": {"heldout": {"bits_per_byte": 2.3}}, "limit": 5},  # growdsl eval
        {"event": "eval", "step": 2, "results": {"arc_easy": {"acc": 0.4}}, "limit": 5},
    ]
    (run / "history.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    scores, notes = final_scores([read_run(run)])
    assert scores == [{"heldout": {"bits_per_byte": 2.5}, "arc_easy": {"acc": 0.4}}]
    assert notes == ["r was scored on the first 5 documents of arc_easy (--limit)"]
