"""Every class of mistake gets file:line:col, the offending text, what is wrong and a hint."""

import pytest

from growdsl.lang.errors import ScheduleError
from growdsl.plan import plan_source

# (source, line, col, end col, message fragment, hint fragment)
CASES = {
    "syntax: misspelled keyword": ("trian 6L for 10B", 1, 1, 6, "unknown word 'trian'", "did you mean 'train'?"),
    "syntax: misspelled choice": ("train 6L for 1B with ac ful", 1, 25, 28, "unknown word 'ful'", "'full'"),
    "syntax: missing value": ("model 1.1B dim", 1, 15, 16, "expected a number", None),
    "syntax: stray character": ("train 6L for 10B @", 1, 18, 19, "unexpected character '@'", "remove it"),
    "syntax: unterminated string": ('stack layers "12', 1, 14, 15, "unterminated string", "close the string"),
    "unknown unit": ("train 6L for 10G", 1, 16, 17, "unknown unit 'G'", "K, M, B or T"),
    "lr past AdamW's range": ("lr 1e39\ntrain 6L for 1B", 1, 4, 8, "must be above 0 and below 10000, not 1e39", None),
    "val on less than a sequence": (
        "seq 128\nval tokens 100\ntrain 6L for 1B",
        2,
        1,
        15,
        "val tokens 100 is less than one 128-token sequence",
        "val tokens 2048",
    ),
    "val interval without unit": ("val every 50\ntrain 6L for 1B", 1, 11, 13, "has no unit", "50 steps"),
    "unit in lower case": ("train 6L for 10b", 1, 16, 17, "unknown unit 'b'", "did you mean 'B'?"),
    "amount without unit": ("train 6L for 1000", 1, 14, 18, "has no unit", "1000 steps"),
    "layer count without L": ("train 6 for 10B", 1, 7, 8, "needs an L", "6L"),
    "layer count as amount": ("train 6L", 1, 7, 9, "is a layer count", "train 6L for 10B"),
    "unknown preset": ("model 1.2B\ntrain 6L for 1B", 1, 7, 11, "unknown model preset '1.2B'", "did you mean '1.1B'?"),
    "unknown preset name": ("model tiyn\ntrain 2L for 1M", 1, 7, 11, "unknown model preset", "did you mean 'tiny'?"),
    "pattern names a missing layer": (
        'train 6L for 10B; stack layers "12-3457*5-56"; train 1B',
        1,
        39,
        40,
        "layer 7 does not exist",
        "layers 1..6",
    ),
    "empty pattern": ('train 6L for 10B; stack layers ""; train 1B', 1, 33, 34, "empty pattern", "123456*4"),
    "malformed pattern": ('train 6L for 10B; stack layers "12--34"; train 1B', 1, 36, 37, "empty segment", None),
    "growth that does not grow": (
        'train 6L for 10B; stack layers "654321"; train 1B',
        1,
        19,
        40,
        "does not grow: 6 layers become 6",
        None,
    ),
    "factor x1": ("train 6L for 10B; stack x1; train 1B", 1, 25, 27, "x1 does not grow", "at least 2"),
    "widen to the same width": ("train 6L for 10B; widen dim 2048; train 1B", 1, 19, 33, "does not grow", None),
    "widen shrinks": ("train 6L for 10B; widen ffn 1024; train 1B", 1, 19, 33, "cannot shrink ffn", None),
    "width not divisible by heads": (
        "model llama dim 1000 heads 16 layers 4\ntrain 1B",
        1,
        1,
        39,
        "dim 1000 does not divide by 16 heads",
        "multiple of heads",
    ),
    "width not whole heads": ("train 6L for 10B\nwiden dim 2000\ntrain 1B", 2, 1, 15, "64-wide heads", "dim 1984"),
    "widen changes head_dim": (
        "train 6L for 10B\nwiden dim 4096 heads 32\ntrain 1B",
        2,
        1,
        24,
        "changes head_dim",
        "64 heads",
    ),
    "kv heads do not divide": (
        "model llama dim 512 heads 8 kv_heads 3 layers 2\ntrain 1B",
        1,
        1,
        48,
        "do not divide into 3 kv heads",
        "kv_heads",
    ),
    "less than one step": ("train 6L for 10K", 1, 14, 17, "less than one step", "at least 2.1M"),
    "growth before training": ("stack x4\ntrain 6L for 10B", 1, 1, 9, "growth before any training", "train 6L"),
    "growth at the end": ("train 6L for 10B; stack x4", 1, 19, 27, "growth at the end", "train 300B"),
    "missing model fields": (
        "model llama dim 512\ntrain 6L for 1B",
        1,
        1,
        20,
        "incomplete model: heads missing",
        "preset",
    ),
    "missing depth": ("model llama dim 512 heads 8\ntrain 1B", 2, 1, 9, "missing model depth", "6L"),
    "nothing to train": ("# just a comment\nlr 1e-3\n", None, None, None, "nothing to train", "train 6L"),
    "contradictory factor and pattern": (
        'train 6L for 10B; stack x4 layers "123*2"; train 1B',
        1,
        19,
        42,
        "x4 and the pattern disagree",
        None,
    ),
    "contradictory lr policy and settings": (
        "train 6L for 10B; stack x4 lr continue; train 1B with lr 1e-4",
        1,
        41,
        62,
        "continues the LR schedule",
        "lr restart",
    ),
    "contradictory policies": (
        "train 6L for 10B; stack x4 optimizer reset optimizer carry; train 1B",
        1,
        44,
        59,
        "contradictory policies",
        None,
    ),
    "contradictory depth": (
        "train 6L for 10B; stack x4; train 12L for 1B",
        1,
        35,
        38,
        "has 24 layers here, not 12",
        "growth step",
    ),
    "contradictory lr range": ("lr 1e-4 to 1e-3\ntrain 6L for 1B", 1, 1, 16, "above max LR", "lr MAX to MIN"),
    "model declared twice": ("model 1.1B\nmodel 7B\ntrain 6L for 1B", 2, 1, 9, "declared twice", "line 1"),
    "setting before a preset": (
        "micro_batch 3\nmodel 7B\ntrain 6L for 10B",
        1,
        1,
        14,
        "a setting before the model statement",
        "move the model statement to the top",
    ),
    "model after training": ("train 6L for 1B\nmodel 7B", 2, 1, 9, "before the first train", None),
    "batch not whole sequences": (
        "batch 2M tokens\ntrain 6L for 10B",
        1,
        1,
        16,
        "not a whole number of 2048-token",
        "batch 977 seqs",
    ),
    "tp does not divide heads": ("train 6L for 10B with tp 3", 1, 23, 27, "tp 3 does not divide", None),
    "tp does not divide seq": (
        "model 7B\nseq 2050\nbatch 8 seqs\ntrain 8L for 1B with tp 4",
        4,
        22,
        26,
        "does not divide the sequence length 2050",
        "sequence parallel",
    ),
    "micro batch does not divide": ("micro_batch 3\ntrain 6L for 10B", 1, 1, 14, "does not divide the batch", None),
    "auto without a growth after": ("train 6L for auto", 1, 14, 18, "needs a growth right after", "stack x4"),
    "auto for a ramp": ("train 6L for 1B; stack x4 init random ramp auto; train 1B", 1, 44, 48, "not allowed", None),
    "setting twice in a stage": ("train 6L for 1B with seq 512, seq 1024", 1, 31, 39, "set twice", None),
    "beta out of range": ("betas 0.9 1.5\ntrain 6L for 1B", 1, 11, 14, "beta2 must be", None),
    "fractional layer count": ("model llama dim 512 heads 8 layers 2.5\ntrain 1B", 1, 36, 39, "whole number", None),
    "empty data path": ('data ""\ntrain 6L for 1B', 1, 6, 8, "empty data path", None),
}


@pytest.mark.parametrize("name", CASES)
def test_error(errors, name):
    source, line, col, end_col, message, hint = CASES[name]
    found = errors(source)
    first = found[0]
    assert message in first.message, first
    if line is None:
        assert first.span is None
    else:
        assert (first.span.line, first.span.col, first.span.end_col) == (line, col, end_col), first
    if hint is not None:
        assert first.hint and hint in first.hint, first


def test_rendering_names_file_line_col_underlines_and_hints():
    source = "model 1.1B\ntrain 6L for 10G\n"
    try:
        plan_source(source, "runs/x.grow")
    except ScheduleError as e:
        text = e.render(source, "runs/x.grow")
    assert text.splitlines() == [
        "runs/x.grow:2:16: error: unknown unit 'G' in the amount to train '10G'",
        "   2 | train 6L for 10G",
        "     |                ^",
        "  hint: token amounts take K, M, B or T (10B = 10 billion tokens); or write N steps",
    ]


def test_several_syntax_errors_are_reported_together(errors):
    found = errors('trian 6L for 10B\nstack x4 layers "12\nlr_schedule cosin\ntrain 300B with ac ful\n')
    assert [(d.span.line, d.message.split(":")[0]) for d in found] == [
        (1, "unknown word 'trian'"),
        (2, "unterminated string"),
        (3, "unknown word 'cosin'"),
        (4, "unknown word 'ful'"),
    ]


def test_several_semantic_errors_are_reported_together(errors):
    found = errors('lr 1e-4 to 1e-3\ntrain 6L for 10G\nstack layers "17"\n')
    assert [d.span.line for d in found] == [1, 2, 3]


def test_syntax_errors_do_not_hide_the_other_statements_errors(errors):
    found = errors(
        "model tiny\ntrain 2L for 10 steps\nstak x2\ntrain 10 steps with lr 1e-3 to 1e-2\nwiden dim 100\nseq 0\n"
    )
    assert [(d.span.line, d.message) for d in found] == [
        (3, "unknown word 'stak'"),
        (4, "min LR 0.01 is above max LR 0.001"),  # a setting is checked after the broken statement...
        (6, "seq must be between 1 and 10,000,000, not 0"),
    ]  # ...but not widen, whose model the broken statement may have changed


def test_errors_on_one_line_come_together(errors):
    found = errors("train 6Q for 10X with lr 5 to 9\n")
    assert [d.message for d in found] == [
        "'6Q' is not a layer count",
        "unknown unit 'X' in the amount to train '10X'",
        "min LR 9 is above max LR 5",
    ]


@pytest.mark.parametrize(
    "growth,message",
    [
        ("stack x2 init rand", "unknown growth operator 'rand'"),
        ("stack x2 init direct ramp 10 steps", "init direct takes no option 'ramp'"),
        ("stack x2 init random 5 steps", "init random takes no bare amount"),
        ("stack x2 init learn 5 steps 6 steps", "'learn' of init learn is given twice"),
        ("stack x2 init random ramp 3 steps ramp 4 steps", "'ramp' of init random is given twice"),
        ("stack x2 init learn 10 steps at lr 0", "'at lr' of init learn must be above 0, not 0"),
        ("stack x2 init random ramp 10", "'10' has no unit: steps or tokens?"),
        ("stack x2 init random rampp", "init random takes no option 'rampp'"),
        ("stack x2 init random ramp 5 stepsize", "init random takes no option 'stepsize'"),
        ("stack x2 init random ramp", "'ramp' of init random needs a value"),
        ("stack x2 init direct init zero", "init is given twice"),
        ("stack x2 init learn at lr 1e-4B", "'at lr' of init learn takes a plain number; 'B' is not a unit here"),
    ],
)
def test_operator_options_are_checked_against_the_operators_description(errors, growth, message):
    found = errors(f"model tiny\ntrain 2L for 10 steps\n{growth}\ntrain 10 steps\n")
    assert [(d.span.line, d.message) for d in found] == [(3, message)]


def test_a_setting_that_does_not_parse_leaves_what_depends_on_it_unchecked(errors):
    found = errors("model tiny\nbatch 8\ntrain 2L for 1M\nstack x2\ntrain 2M\n")
    assert [(d.span.line, d.message) for d in found] == [
        (2, "statement ends too early: expected 'seqs', 'sequences' or 'tokens'")
    ]


def test_a_long_list_of_expected_statements_is_cut_at_a_whole_word(errors):
    said = errors("model tiny\ntrain 2L for 9 steps with freeze new,head\n")[0].message
    listed = said.split("expected a statement (")[1].removesuffix(", ...)").split(", ")
    assert said.endswith(", ...)") and all(w.startswith("'") and w.endswith("'") for w in listed)


def test_errors_deep_in_a_long_file_are_found_once_and_where_they_are(errors):
    """A 6,000-line schedule with errors: each statement is parsed alone and moved to its place (it was
    parsed with every line above it: quadratic, 20 s), each error said once (a list search: quadratic)."""
    filler = "seed 1\n" * 2999
    continued = "train 10B with ac ful \\\n  lr 1e-3\n"  # a statement over two lines
    source = "train 6L for 10B\n" + filler + "  stack x4 init zeroo\n" + filler + continued
    found = errors(source)
    assert [(d.span.line, d.span.col) for d in found][:2] == [(3001, 17), (6001, 19)]
    assert "unknown growth operator 'zeroo'" in found[0].message and "unknown word 'ful'" in found[1].message
    many = errors("train 6L for 10B\n" + "model 1.1B\n" * 4000 + "train 1B\n")
    assert len(many) == 4000 and len({d.span.line for d in many}) == 4000
