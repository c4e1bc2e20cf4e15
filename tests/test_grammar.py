"""The grammar: what parses, into which AST, and that the package ships the grammar file."""

from pathlib import Path

import pytest
from conftest import ROOT, SCHEDULES

from growdsl.lang import ast
from growdsl.lang.parser import grammar_text, parse


def test_the_package_ships_the_grammar_file():
    assert grammar_text() == (ROOT / "grammars" / "growdsl.lark").read_text()


def test_one_liner_parses_into_train_stack_train():
    s = parse('train 6L for 10B; stack x4 layers "123456*4"; train 300B')
    base, grow, target = s.statements
    assert isinstance(base, ast.Train) and base.shape.layers.text == "6L"
    assert (base.amount.kind, base.amount.number.value, base.amount.number.unit) == ("tokens", 10, "B")
    assert isinstance(grow, ast.Growth) and grow.kind == "stack"
    assert grow.factor.value == 4 and grow.pattern.value == "123456*4" and grow.init is None
    assert isinstance(target, ast.Train) and target.shape is None and target.amount.number.text == "300B"
    assert (grow.span.line, grow.span.col, grow.span.end_col) == (1, 19, 45)


@pytest.mark.parametrize("path", SCHEDULES, ids=lambda p: p.name)
def test_every_example_schedule_parses(path: Path):
    assert parse(path.read_text(), str(path)).statements


def test_separators_comments_and_line_continuations():
    s = parse("# header\n\nmodel 1.1B  # trailing\nlr 3e-4 \\\n   to 3e-5;;\ntrain 6L for 1B;\n")
    model, lr, train = s.statements
    assert isinstance(model, ast.Model) and model.preset.text == "1.1B"
    assert lr.key == "lr" and [a.value for a in lr.args] == [3e-4, 3e-5]
    assert train.span.line == 6


def test_statements_need_a_separator():
    from growdsl.lang.errors import ScheduleError

    with pytest.raises(ScheduleError):
        parse("train 6L for 10B train 300B")


def test_growth_clauses():
    s = parse(
        "stack x4 init learn 100 steps at lr 7e-5 optimizer carry lr continue\n"
        "interpolate x2 init random ramp 2M\nwiden dim 2048 ffn 5632 init zero"
    )
    learn, interp, widen = s.statements
    assert learn.init.name.text == "learn"
    assert [(o.words, o.value.kind, o.value.number.text) for o in learn.init.options] == [
        ("", "steps", "100"),
        ("at lr", "bare", "7e-5"),
    ]
    assert [(p.key, p.value.text) for p in learn.policies] == [("optimizer", "carry"), ("lr", "continue")]
    assert interp.kind == "interpolate" and interp.init.name.text == "random"
    assert [(o.words, o.value.number.text) for o in interp.init.options] == [("ramp", "2M")]
    assert widen.kind == "widen" and [(f.key, f.args[0].value) for f in widen.fields] == [("dim", 2048), ("ffn", 5632)]


def test_train_with_shape_and_overrides():
    t = parse("train 24L dim 1024 heads 16 for 10B with batch 512 seqs, lr 1e-3, ac full, compile on").statements[0]
    assert t.shape.layers.value == 24 and [f.key for f in t.shape.fields] == ["dim", "heads"]
    assert [(s.key, [getattr(a, "text", None) for a in s.args]) for s in t.settings] == [
        ("batch", ["512", "seqs"]),
        ("lr", ["1e-3"]),
        ("ac", ["full"]),
        ("compile", ["on"]),
    ]


def test_amount_kinds():
    kinds = [
        st.amount.kind
        for st in parse("train 10B\ntrain 500 steps\ntrain 1000 tokens\ntrain 1000\ntrain 6L for auto").statements
    ]
    assert kinds == ["tokens", "steps", "tokens", "bare", "auto"]
