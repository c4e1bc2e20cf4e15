"""Should I grow? The limits measured since the paper, as warnings with their sources: silent where
the paper's own runs are, and on every shipped schedule."""

import pytest
from conftest import ROOT, SCHEDULES

from growdsl.plan import plan_source, plan_tournament
from growdsl.plan.advice import MEASURED_TOKENS_PER_PARAM, advise

SHIPPED = [*SCHEDULES, *sorted((ROOT / "schedules" / "study").glob("*.grow"))]
SHIPPED += [p for p in sorted((ROOT / "schedules" / "recipes").glob("*.grow")) if "model from" not in p.read_text()]


def advice(text: str) -> list[str]:
    plan = plan_source(text)
    return [f"{a.message} | {a.meaning} | {a.source}" for a in advise(plan.stages, plan.start)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_silent_on_the_shipped_schedules(path):
    plan, tournament = plan_tournament(path.read_text(), str(path))
    for arm in tournament.arms if tournament else []:
        assert advise(arm.plan.stages, arm.plan.start) == []
    assert advise(plan.stages, plan.start) == []


def test_silent_where_the_paper_is():
    assert advice("model 7B\ntrain 8L for auto\nstack x4\ntrain 2T") == []  # the guideline's worked example
    assert advice("model 410M\ntrain 6L for 10B\nstack x4\ntrain 750B") == []  # its furthest measured
    assert advice("model 1.1B\ntrain 12L for 10B\nstack x2\ntrain 100B") == []  # g = 2


def test_a_growth_factor_outside_2_to_4_names_both_sources():
    (big,) = advice("model 1.1B layers 24\ntrain 3L for 10B\nstack x8\ntrain 100B")
    assert "g = 8 is outside the paper's 2-4" in big and "2605.13405" in big and "Du et al. 2024" in big
    (small,) = advice('model 1.1B layers 9\ntrain 6L for 10B\nstack layers "12-2-34-4-56-6"\ntrain 100B')
    assert "g = 1.50" in small and "saves little" in small
    # by design: named placements grow by a few layers, and a late growth far
    assert advice("model 1.1B layers 9\ntrain 6L for 10B\nstack after every 2\ntrain 100B") == []
    late = "model 1.1B\nlr_schedule wsd\ntrain 1L for 80B\nstack x24 lr continue\ntrain 20B"
    assert advice(late) == []
    assert any("g = 24" in a for a in advice(late.replace("lr continue", "")))  # not late: a restart


def test_a_target_trained_past_the_measured_tokens_per_parameter():
    (far,) = advice("model 410M\ntrain 6L for 10B\nstack x4\ntrain 2T")
    per = round(2e12 / 373_867_520)
    assert f"{per:,} tokens a parameter" in far and f"{MEASURED_TOKENS_PER_PARAM:,.0f}" in far
    assert "~20 tokens a parameter" in far


def test_an_overtrained_base_and_one_grown_too_early():
    (over,) = advice("model 1.1B\ntrain 6L for 300B\nstack x4\ntrain 100B")
    assert f"{300e9 / 395_339_776:,.0f} tokens a parameter, 38x compute-optimal" in over and "2510.06548" in over
    (early,) = advice("model 7B\ntrain 8L for 1B\nstack x4\ntrain 300B")
    assert "1.00B tokens before this growth" in early and "d = 20.06B" in early and "like scratch" in early


def test_advice_is_a_warning_at_the_growth_never_an_error():
    plan = plan_source("model 410M\ntrain 6L for 10B\nstack x4\ntrain 2T")
    (w,) = plan.warnings
    assert (w.line, w.col) == (3, 1) and "2605.13405" in (w.hint or "")
