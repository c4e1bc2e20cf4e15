"""`growdsl compare` on synthetic runs whose answer is known."""

import json

import numpy as np
import pytest

from growdsl.cli import main
from growdsl.eval.compare import CompareError, compare, compute_to_reach, read_run


def write_run(path, flops, loss, growth_at=None, evals=None):
    path.mkdir(parents=True)
    lines = [{"step": i + 1, "tokens": 1000 * (i + 1), "flops": int(f), "loss": float(v), "lr": 1e-3}
             for i, (f, v) in enumerate(zip(flops, loss))]
    if growth_at is not None:
        lines.insert(growth_at, {"event": "growth", "step": growth_at, "tokens": 1000 * growth_at,
                                 "flops": int(flops[growth_at - 1]), "text": "stack x2"})
    if evals:
        lines.append({"event": "eval", "step": len(loss), "tokens": 1000 * len(loss), "flops": int(flops[-1]),
                      "results": evals})
    (path / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_a_run_that_reaches_every_loss_with_half_the_compute_is_a_100_percent_speedup(tmp_path):
    flops = np.arange(1, 401) * 1e9
    scratch = write_run(tmp_path / "scratch", flops, 10 - flops / 1e11)  # linear in FLOPs: interpolation is exact
    grown = write_run(tmp_path / "grown", flops, 10 - 2 * flops / 1e11, growth_at=100,
                      evals={"arc_easy": {"acc": 0.3}})
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
    lines = [{"step": s, "tokens": s, "flops": s, "loss": v} for s, v in [(1, 3.0), (2, 2.0), (3, 9.0), (2, 2.5), (3, 1.5)]]
    (run / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    curve = read_run(run)
    assert list(curve.loss) == [3.0, 2.5, 1.5]


def test_not_a_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(CompareError, match="no history.jsonl"):
        read_run(tmp_path)
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "growdsl compare:" in capsys.readouterr().err
