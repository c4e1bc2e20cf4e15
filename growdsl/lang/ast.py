"""The schedule as written: statements with their source spans, values not yet interpreted.

Meaning (units, defaults, consistency) is the compiler's job; the AST only remembers what the
user typed and where, so every later error can point at it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from growdsl.lang.errors import Diagnostic, Span

_NUMBER = re.compile(r"(?P<num>[0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(?P<unit>[A-Za-z%]*)")


@dataclass(frozen=True)
class Number:
    """A number with the unit glued to it (`10B`, `6L`, `3e-4`): unit may be ''."""

    text: str
    value: float
    unit: str
    span: Span

    @staticmethod
    def parse(text: str, span: Span) -> Number:
        m = _NUMBER.fullmatch(text)
        assert m, text  # the grammar's NUMBER terminal only admits this shape
        return Number(text, float(m["num"].replace("_", "")), m["unit"], span)

    @property
    def is_integer(self) -> bool:
        return math.isfinite(self.value) and self.value == int(self.value)

    @property
    def unit_span(self) -> Span:
        start = self.span.col + len(self.text) - len(self.unit)
        return Span(self.span.line, start, self.span.line, start + max(1, len(self.unit)))


@dataclass(frozen=True)
class Word:
    """A keyword choice (`cosine`, `carry`) or a bare name (a preset)."""

    text: str
    span: Span


@dataclass(frozen=True)
class Str:
    """A quoted string, quotes removed."""

    value: str
    span: Span


@dataclass(frozen=True)
class Factor:
    """`x4`: a growth factor."""

    value: int
    span: Span


@dataclass(frozen=True)
class Placement:
    """`after every 4`, `middle 4`, `top 2`, `bottom 2`: which layers a stack repeats, by name."""

    where: str  # "after every" | "middle" | "top" | "bottom"
    size: Number  # every size-th layer, or a block of size layers
    span: Span


@dataclass(frozen=True)
class Amount:
    """How long to train: tokens (`10B`, `2e6 tokens`), `N steps`, or `auto`."""

    kind: str  # "tokens" | "steps" | "auto" | "bare" (a number with neither unit nor word)
    number: Number | None
    span: Span


Value = Number | Word | Str | Amount


@dataclass(frozen=True)
class Setting:
    """`key values...`: a model field (`dim 2048`) or a training setting (`lr 3e-4 to 3e-5`)."""

    key: str
    args: tuple[Value, ...]
    span: Span


@dataclass(frozen=True)
class Model:
    preset: Word | Number | None
    fields: tuple[Setting, ...]
    span: Span
    source: Str | None = None  # `model from "DIR"`: the model a schedule starts from
    trained: Amount | None = None  # `trained 2T`: what that model cost


@dataclass(frozen=True)
class Shape:
    """The shape a `train` statement asks for: `6L`, `24L dim 1024 heads 16`."""

    layers: Number | None
    fields: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True)
class Train:
    shape: Shape | None
    amount: Amount
    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True)
class InitOption:
    """One option of an operator: `ramp 100 steps` (words "ramp"), `at lr 1e-4` (words "at lr"),
    or a bare amount right after the name (words "")."""

    words: str
    value: Amount | None  # None: the words alone (an error the compiler names)
    span: Span


@dataclass(frozen=True)
class Init:
    """`init NAME OPTIONS`: the growth operator and its options, as written."""

    name: Word
    options: tuple[InitOption, ...]
    span: Span


@dataclass(frozen=True)
class Policy:
    """`optimizer reset|carry` or `lr restart|continue`."""

    key: str
    value: Word
    span: Span


@dataclass(frozen=True)
class Growth:
    """`stack`, `interpolate`, `widen` or `upcycle`, with its operator and policies."""

    kind: str  # "stack" | "interpolate" | "widen" | "upcycle"
    factor: Factor | None
    pattern: Str | None
    fields: tuple[Setting, ...]  # widen's target width; upcycle's `experts` field
    init: Init | None
    policies: tuple[Policy, ...]
    extra_inits: tuple[Init, ...]  # any `init` after the first: an error
    span: Span
    placement: Placement | None = None  # stack's layers by name, instead of a pattern


@dataclass(frozen=True)
class GrowthDefaults:
    policies: tuple[Policy, ...]
    span: Span


@dataclass(frozen=True)
class Unparsed:
    """A statement with a syntax error (reported by the parser): the compiler skips it, and after
    one that may change the model (`keyword` model, train, stack, ...) checks nothing that depends
    on the model's shape."""

    keyword: str  # its first word
    span: Span


@dataclass(frozen=True)
class Tournament:
    """`try GROWTH | GROWTH ... for AMOUNT`: candidate growths of one base, each probed for `probe`."""

    candidates: tuple[Growth, ...]
    probe: Amount
    span: Span


Statement = Model | Setting | Train | Growth | GrowthDefaults | Tournament | Unparsed


@dataclass
class Schedule:
    statements: list[Statement] = field(default_factory=list)
    source: str = ""
    filename: str = "<schedule>"
    syntax_errors: list[Diagnostic] = field(default_factory=list)  # from parse_partial only
