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


# Every statement of the shipped schedules, to compose new schedules from.
STATEMENTS = sorted(
    {line.strip() for s in SOURCES for line in s.splitlines() if line.strip() and not line.strip().startswith("#")}
)
PLAN_SECONDS, PLAN_BYTES = 10.0, 256 * 2**20  # bounds of one plan (typically 0.01-0.3 s and a few MB)


@st.composite
def composed(draw):
    """A schedule of the shipped statements in any order, some repeated up to the 64 KiB a schedule
    may hold (thousands of growths or stages: what a plan's cost grows with)."""
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 10))):
        line = draw(st.sampled_from(STATEMENTS))
        lines += [line] * draw(st.sampled_from([1, 1, 1, 2, 5, 100, 2000]))
    return "\n".join(lines)[: 64 * 2**10]


# Few examples, as each may be a 64 KiB schedule traced by tracemalloc; before the fixes they found
# (a statement parsed again with all the lines above it, errors deduplicated by a list search) one in
# ten took 2-20 s.
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(composed())
def test_composed_schedules_plan_within_time_and_memory(source):
    import time
    import tracemalloc

    tracemalloc.start()
    began = time.perf_counter()
    try:
        try:
            plan = plan_source(source, "fuzz.grow")
        except ScheduleError as e:
            assert e.errors
            e.render(source, "fuzz.grow")
        else:
            render_plan(plan, predict_d=True)
        seconds = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < PLAN_SECONDS and peak < PLAN_BYTES, (seconds, peak, source[:200])
