"""No input ever produces a traceback: mutate the example schedules thousands of ways and require
a plan or a ScheduleError whose diagnostics point inside the source."""

import string

from conftest import SCHEDULES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from growdsl.lang.errors import ScheduleError
from growdsl.plan import plan_source
from growdsl.plan.plan import Plan
from growdsl.plan.render import render_plan

SOURCES = [p.read_text() for p in SCHEDULES]
WORDS = sorted(
    {w for s in SOURCES for w in s.replace(";", " ").replace('"', " ").split()}
    | {
        "x0",
        "x1",
        "x99",
        "0L",
        "1e400",
        "0",
        "-",
        "*",
        "..",
        '"',
        '""',
        "\\\n",
        ";",
        "\n",
        "#",
        "auto",
        "steps",
        "tokens",
        "widen",
        "interpolate",
        "init",
        "random",
        "learn",
        "zero",
        "ramp",
        "at",
        "lr",
        "with",
        ",",
        "1e-9",
        "9999999999999T",
        "0.5",
        "3..1",
        '"1..99*3"',
        '"0"',
        "tied",
        "layers",
        "heads",
        "kv_heads",
        "1e4009",
        "1e-400",
        "99999999",
        "x99999999",
        '"1*99999999"',
        "1e30L",
        "4096L",
        "dim",
        "ffn",
    }
)


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 12)))
        insert = draw(
            st.one_of(
                st.just(""),
                st.sampled_from(WORDS).map(lambda w: f" {w} "),
                st.sampled_from(WORDS),
                st.text(alphabet=string.printable + "×é\x00", max_size=4),
            )
        )
        text = text[:i] + insert + text[j:]
    return text


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated())
def test_mutated_schedules_plan_or_fail_cleanly(source):
    try:
        plan = plan_source(source, "fuzz.grow")
    except ScheduleError as e:
        assert e.errors
        lines = source.splitlines() or [""]
        for d in e.errors:
            if d.span is not None:
                assert 1 <= d.span.line <= len(lines) + 1, d
                assert d.span.col >= 1, d
        e.render(source, "fuzz.grow")
    else:
        render_plan(plan, predict_d=True)
        assert Plan.from_json(plan.to_json()) == plan
