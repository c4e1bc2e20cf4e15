"""Layer maps and the connection rate, against the paper's notation and worked example."""

from fractions import Fraction

import pytest

from growdsl.plan.layermap import (
    PatternError,
    compact,
    connection_rate,
    gstack,
    interpolation,
    parse_pattern,
    pattern_of,
    placed,
)

# The eight 6 -> 24 patterns the paper compares (App. H), 0-indexed, with R_c.
PAPER_PATTERNS = {
    "123456*4": ([0, 1, 2, 3, 4, 5] * 4, Fraction(20, 23)),
    "12-3456*5-56": ([0, 1] + [2, 3, 4, 5] * 5 + [4, 5], Fraction(18, 23)),
    "12-345*7-6": ([0, 1] + [2, 3, 4] * 7 + [5], Fraction(17, 23)),
    "123-456*7": ([0, 1, 2] + [3, 4, 5] * 7, Fraction(17, 23)),
    "1234-56*10": ([0, 1, 2, 3] + [4, 5] * 10, Fraction(14, 23)),
    "12-34*10-56": ([0, 1] + [2, 3] * 10 + [4, 5], Fraction(14, 23)),
    "1-234*7-56": ([0] + [1, 2, 3] * 7 + [4, 5], Fraction(17, 23)),
    "123*7-456": ([0, 1, 2] * 7 + [3, 4, 5], Fraction(17, 23)),
}


@pytest.mark.parametrize("pattern", PAPER_PATTERNS)
def test_paper_patterns_resolve_exactly(pattern):
    expected, rc = PAPER_PATTERNS[pattern]
    m = parse_pattern(pattern, 6)
    assert m == expected and len(m) == 24
    assert connection_rate(m) == rc
    assert parse_pattern(pattern_of(m), 6) == m  # the canonical form means the same map


def test_paper_worked_example_3_to_6():
    assert gstack(3, 2) == [0, 1, 2, 0, 1, 2]
    assert interpolation(3, 2) == [0, 0, 1, 1, 2, 2]
    assert connection_rate(gstack(3, 2)) == Fraction(4, 5)  # 80%
    assert connection_rate(interpolation(3, 2)) == Fraction(2, 5)  # 40%


def test_gstack_is_the_full_block_pattern():
    assert parse_pattern("12345678*4", 8) == gstack(8, 4)
    assert parse_pattern("1..12*2", 12) == gstack(12, 2)
    assert pattern_of(gstack(12, 2)) == "1..12*2"


def test_ranges_and_singletons():
    assert parse_pattern("1..3-10..12*2", 12) == [0, 1, 2, 9, 10, 11, 9, 10, 11]
    assert parse_pattern("12-2-34-4-56-6", 6) == [0, 1, 1, 2, 3, 3, 4, 5, 5]  # LLaMA-Pro interleave


def test_compact_rendering():
    assert compact(gstack(6, 4)) == "(0-5)x4"
    assert compact(interpolation(6, 2)) == "0-5 each x2"
    assert compact(parse_pattern("12-3456*5-56", 6)) == "0-5 (2-5)x4 4-5"


@pytest.mark.parametrize(
    "pattern, start, message",
    [
        ("", 0, "empty pattern"),
        ("12-3457", 6, "layer 7 does not exist"),
        ("102", 1, "layer 0 does not exist"),
        ("12--34", 3, "empty segment"),
        ("*3", 0, "empty segment"),
        ("1234*", 5, "repeat count"),
        ("1234*x", 5, "repeat count"),
        ("12*0", 3, "at least once"),
        ("12a", 2, "unexpected 'a'"),
        ("3..1", 0, "runs backwards"),
    ],
)
def test_malformed_patterns_say_where(pattern, start, message):
    with pytest.raises(PatternError) as info:
        parse_pattern(pattern, 6)
    assert message in info.value.message
    assert info.value.start == start


def test_placements_by_name_are_the_maps_their_patterns_write():
    # LLaMA-Pro on Llama-2-7B: a copy after every 4th of 32 blocks (the recipe's pattern before names)
    llama_pro = "1..4-4-5..8-8-9..12-12..12-13..16-16..16-17..20-20..20-21..24-24..24-25..28-28..28-29..32-32..32"
    assert placed("after every", 4, 2, 32) == parse_pattern(llama_pro, 32)
    assert placed("after every", 2, 2, 6) == parse_pattern("12-2-34-4-56-6", 6)
    assert placed("after every", 1, 3, 3) == interpolation(3, 3)  # every layer: interpolation
    assert placed("middle", 2, 2, 6) == parse_pattern("1234-3456", 6)  # MIDAS: the middle block again
    assert placed("middle", 4, 2, 8) == parse_pattern("123456-345678", 8)
    assert placed("middle", 2, 2, 7) == parse_pattern("1234-3456-7", 7)  # the lower middle when off centre
    assert placed("top", 2, 3, 6) == parse_pattern("123456-56*2", 6)
    assert placed("bottom", 2, 2, 6) == parse_pattern("12*2-3456", 6)
    assert placed("top", 6, 4, 6) == gstack(6, 4)  # the whole model: G_stack
