"""Text -> AST with Lark (LALR, grammars/growdsl.lark), reporting every syntax error in a file.

A file that parses goes through one Lark pass. A file that does not is split into statements
with the grammar's own lexer and each statement is parsed on its own, so one typo does not hide
the next: the errors of all statements are reported together."""

from __future__ import annotations

import functools
from dataclasses import replace
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from growdsl.lang import ast
from growdsl.lang.errors import Diagnostic, ScheduleError, Span, did_you_mean

MAX_ERRORS = 50


def grammar_text() -> str:
    """The grammar shipped with the package (grammars/growdsl.lark in the source tree, which a source
    checkout that is not installed reads directly)."""
    try:
        return resources.files("growdsl.grammars").joinpath("growdsl.lark").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        return (Path(__file__).resolve().parents[2] / "grammars" / "growdsl.lark").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    # cache=True keeps the compiled LALR tables in the temp dir: `validate` must answer fast.
    return Lark(
        grammar_text(),
        parser="lalr",
        start=["start", "statement"],
        propagate_positions=True,
        maybe_placeholders=False,
        cache=True,
    )


def parse(source: str, filename: str = "<schedule>") -> ast.Schedule:
    """Parse a schedule; raise ScheduleError carrying every syntax error found."""
    schedule = parse_partial(source, filename)
    if schedule.syntax_errors:
        raise ScheduleError(schedule.syntax_errors)
    return schedule


def parse_partial(source: str, filename: str = "<schedule>") -> ast.Schedule:
    """Parse a schedule as far as it goes: every statement that parses, an `Unparsed` in place of each
    one that does not, and their syntax errors (so that the compiler can still check the rest)."""
    parser = lark_parser()
    try:
        tree = parser.parse(source, start="start")
    except UnexpectedInput:
        statements, errors = _parse_statements(parser, source)
        return ast.Schedule(statements, source, filename, errors)
    return ast.Schedule(_ToAst().transform(tree), source, filename)


def _parse_statements(parser: Lark, source: str) -> tuple[list[ast.Statement], list[Diagnostic]]:
    """Parse statement by statement, collecting one error per broken statement."""
    diagnostics: list[Diagnostic] = []
    text, tokens = _lex(parser, source, diagnostics)
    bad_lines = {d.order[0] for d in diagnostics}
    statements: list[ast.Statement] = []
    for group in _split(tokens):
        first, last = group[0], group[-1]
        line, column, start, end_line, end = (
            _int(first.line),
            _int(first.column),
            _int(first.start_pos),
            _int(last.end_line),
            _int(last.end_pos),
        )
        unparsed = ast.Unparsed(str(first), Span.of(first, last))
        if bad_lines & set(range(line, end_line + 1)):
            statements.append(unparsed)
            continue  # already reported: a character no token matches
        # Parsed alone, then moved to where it stands (padding it with the lines above would lex
        # the whole file again for every statement: quadratic in a long file full of errors).
        alone = text[start:end]
        try:
            tree = parser.parse(alone, start="statement")
        except UnexpectedInput as e:
            diagnostics.append(_moved(_diagnose(parser, e, alone), line - 1, column - 1))
            statements.append(unparsed)
        else:
            _move(tree, line - 1, column - 1)
            statements.append(_ToAst().transform(tree))
        if len(diagnostics) >= MAX_ERRORS:
            break
    return statements, sorted(diagnostics, key=lambda d: d.order)


def _move(tree: Tree, lines: int, columns: int) -> None:
    """Shift the positions of a statement parsed alone to where it stands: `lines` down, and on its
    first line `columns` right."""

    def move(where) -> None:  # a token or a tree's meta
        if where.column is not None and where.line == 1:
            where.column += columns
        if where.end_column is not None and where.end_line == 1:
            where.end_column += columns
        if where.line is not None:
            where.line += lines
        if where.end_line is not None:
            where.end_line += lines

    for sub in tree.iter_subtrees():
        if not sub.meta.empty:
            move(sub.meta)
        for child in sub.children:
            if isinstance(child, Token):
                move(child)


def _moved(diagnostic: Diagnostic, lines: int, columns: int) -> Diagnostic:
    span = diagnostic.span
    if span is None:
        return diagnostic
    moved = Span(
        span.line + lines,
        span.col + (columns if span.line == 1 else 0),
        span.end_line + lines,
        span.end_col + (columns if span.end_line == 1 else 0),
    )
    return replace(diagnostic, span=moved)


def _int(position: int | None) -> int:
    """A lexed token's position (Lark types them optional; the lexer always sets them)."""
    assert position is not None
    return position


def _lex(parser: Lark, source: str, diagnostics: list[Diagnostic]) -> tuple[str, list[Token]]:
    """All tokens of the source; characters no token matches are reported and blanked."""
    text = source
    while True:
        try:
            return text, list(parser.lex(text))
        except UnexpectedCharacters as e:
            diagnostics.append(_diagnose(parser, e, text))
            start = end = _int(e.pos_in_stream)
            if text[start] == '"':  # unterminated string: drop the rest of the line
                end = text.find("\n", start)
                end = len(text) if end < 0 else end - 1
            text = text[:start] + " " * (end - start + 1) + text[end + 1 :]
            if len(diagnostics) >= MAX_ERRORS:
                return text, []


def _split(tokens: list[Token]) -> list[list[Token]]:
    groups: list[list[Token]] = []
    current: list[Token] = []
    for tok in tokens:
        if tok.type == "_SEP":
            if current:
                groups.append(current)
            current = []
        else:
            current.append(tok)
    if current:
        groups.append(current)
    return groups


# ---- syntax errors -------------------------------------------------------------------------

_DESCRIBE = {
    "NUMBER": "a number",
    "STRING": 'a quoted string ("...")',
    "FACTOR": "a factor such as x4",
    "NAME": "a name",
    "_SEP": "the end of the statement",
    "$END": "the end of the statement",
    "STEPS": "'steps'",
    "TOKENS": "'tokens'",
    "AUTO": "'auto'",
}


def _keywords(parser: Lark, names) -> dict[str, str]:
    """Terminal name -> the literal keyword it stands for (only literal terminals)."""
    by_name = {t.name: t for t in parser.terminals}
    out = {}
    for name in names:
        term = by_name.get(name)
        if term is not None and isinstance(term.pattern, PatternStr):
            out[name] = term.pattern.value
    return out


def _expected_text(parser: Lark, expected) -> str:
    words = _keywords(parser, expected)
    things = sorted({_DESCRIBE.get(n, f"'{words.get(n, n)}'") for n in expected})
    if len(things) > 8:
        shown: list[str] = []
        for t in (t for t in things if t.startswith("'")):
            if len(", ".join([*shown, t])) > 120:  # whole words only
                break
            shown.append(t)
        return "a statement (" + ", ".join(shown) + ", ...)"
    return things[0] if len(things) == 1 else ", ".join(things[:-1]) + " or " + things[-1]


def _diagnose(parser: Lark, e: UnexpectedInput, text: str) -> Diagnostic:
    line, col = e.line, e.column
    if isinstance(e, UnexpectedCharacters):
        char = text[_int(e.pos_in_stream)]
        if char == '"':
            return Diagnostic(
                "unterminated string", Span(line, col, line, col + 1), 'close the string with " on the same line'
            )
        return Diagnostic(
            f"unexpected character {char!r}",
            Span(line, col, line, col + 1),
            "remove it: a schedule uses words, numbers, quoted strings, ';' and '#'",
        )
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type in ("$END", "_SEP")):
        at = _end_of_last_line(text) if isinstance(e, UnexpectedEOF) or e.token.type == "$END" else (line, col)
        return Diagnostic(
            f"statement ends too early: expected {_expected_text(parser, e.expected)}",
            Span(at[0], at[1], at[0], at[1] + 1),
        )
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    line, col = _int(tok.line), _int(tok.column)
    span = Span(line, col, tok.end_line or line, tok.end_column or col + len(tok))
    words = _keywords(parser, e.expected)
    hint = did_you_mean(str(tok), words.values()) if tok.type in ("NAME", "FACTOR") or str(tok).isalpha() else None
    if hint is None and str(tok).isalpha():  # a misspelt unit after a number (`80 stpes`)
        hint = did_you_mean(str(tok), UNIT_WORDS)
    if tok.type == "NAME" and hint:
        return Diagnostic(f"unknown word '{tok}'", span, hint)
    if str(tok) == "for" and "VBAR" in e.expected and text.lstrip().startswith("try"):
        hint = "a tournament tries two candidates or more: try stack x4 | stack x4 init zero for 100 steps"
    return Diagnostic(f"unexpected '{tok}': expected {_expected_text(parser, e.expected)}", span, hint)


UNIT_WORDS = ("steps", "step", "tokens", "seqs", "sequences")


def _end_of_last_line(text: str) -> tuple[int, int]:
    lines = text.rstrip("\n").split("\n")
    return len(lines), len(lines[-1]) + 1


# ---- parse tree -> AST ---------------------------------------------------------------------


def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _word(tok: Token) -> ast.Word:
    return ast.Word(str(tok), Span.of(tok))


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark tree -> growdsl.lang.ast, keeping a span on every node."""

    # terminals
    @v_args(inline=False)
    def NUMBER(self, tok):
        return ast.Number.parse(str(tok), Span.of(tok))

    @v_args(inline=False)
    def STRING(self, tok):
        return ast.Str(str(tok)[1:-1], Span.of(tok))

    @v_args(inline=False)
    def FACTOR(self, tok):
        return ast.Factor(int(str(tok)[1:]), Span.of(tok))

    @v_args(inline=False)
    def NAME(self, tok):
        return _word(tok)

    # statements
    def start(self, meta, children):
        return list(children)

    def model(self, meta, children):
        if children and isinstance(children[0], ast.Str):  # model from "DIR" [trained AMOUNT]
            return ast.Model(None, (), _span(meta), children[0], children[1] if len(children) > 1 else None)
        preset = children[0] if children and not isinstance(children[0], ast.Setting) else None
        fields = tuple(c for c in children if isinstance(c, ast.Setting))
        return ast.Model(preset, fields, _span(meta))

    def preset(self, meta, children):
        return children[0]

    def amount(self, meta, children):
        first = children[0]
        if isinstance(first, Token):  # AUTO
            return ast.Amount("auto", None, _span(meta))
        if len(children) == 2:
            kind = "steps" if children[1].type == "STEPS" else "tokens"
        else:
            kind = "tokens" if first.unit else "bare"  # `train 1000`: tokens or steps? ask
        return ast.Amount(kind, first, _span(meta))

    def shape(self, meta, children):
        layers = children[0] if isinstance(children[0], ast.Number) else None
        return ast.Shape(layers, tuple(c for c in children if isinstance(c, ast.Setting)), _span(meta))

    def train(self, meta, children):
        shape = children[0] if isinstance(children[0], ast.Shape) else None
        amount = next(c for c in children if isinstance(c, ast.Amount))
        settings = tuple(c for c in children if isinstance(c, ast.Setting))
        return ast.Train(shape, amount, settings, _span(meta))

    def _growth(self, kind, meta, children):
        return ast.Growth(
            kind=kind,
            factor=next((c for c in children if isinstance(c, ast.Factor)), None),
            pattern=next((c for c in children if isinstance(c, ast.Str)), None),
            fields=tuple(c for c in children if isinstance(c, ast.Setting)),
            init=next((c for c in children if isinstance(c, ast.Init)), None),
            extra_inits=tuple(c for c in children if isinstance(c, ast.Init))[1:],
            policies=tuple(c for c in children if isinstance(c, ast.Policy)),
            span=_span(meta),
            placement=next((c for c in children if isinstance(c, ast.Placement)), None),
        )

    def placement(self, meta, children):
        words = " ".join(_word(c).text for c in children[:-1])
        return ast.Placement(words, children[-1], _span(meta))

    def stack(self, meta, children):
        return self._growth("stack", meta, children)

    def interpolate(self, meta, children):
        return self._growth("interpolate", meta, children)

    def widen(self, meta, children):
        return self._growth("widen", meta, children)

    def upcycle(self, meta, children):
        return self._growth("upcycle", meta, children)

    def init(self, meta, children):
        return ast.Init(children[0], tuple(children[1:]), _span(meta))

    def init_option(self, meta, children):
        value = children[-1] if isinstance(children[-1], ast.Amount) else None
        words = " ".join(c.text if isinstance(c, ast.Word) else str(c) for c in children if c is not value)
        return ast.InitOption(words, value, _span(meta))

    def optimizer_policy(self, meta, children):
        return ast.Policy("optimizer", _word(children[1]), _span(meta))

    def lr_policy(self, meta, children):
        return ast.Policy("lr", _word(children[1]), _span(meta))

    def tournament(self, meta, children):
        growths = tuple(c for c in children if isinstance(c, ast.Growth))
        return ast.Tournament(growths, children[-1], _span(meta))

    def growth_defaults(self, meta, children):
        return ast.GrowthDefaults(tuple(children), _span(meta))

    def __default__(self, data, children, meta):
        """Every other rule is a setting or model field: `key args...`."""
        key = str(data)
        args = [_word(c) if isinstance(c, Token) else c for c in children]
        if args and isinstance(args[0], ast.Word) and args[0].text == key:
            args = args[1:]  # the keyword itself, kept by a `!` rule
        return ast.Setting(key, tuple(args), _span(meta))
