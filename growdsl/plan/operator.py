"""What a growth operator is, as the compiler and the renderer see it: no torch.

Each operator is one description in growdsl/plan/operators/NAME.py (found there by name) and one
implementation in growdsl/ops/operators/NAME.py (what it writes into the grown model). Adding an
operator is those two files: the grammar takes `init NAME OPTIONS` for any name, the compiler
reads the description, the trainer calls the implementation without knowing which it is."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from growdsl.plan.plan import Guarantee
from growdsl.plan.shape import ModelShape

# Option names the trainer gives their meaning to, for any operator that declares them.
RAMP = "ramp"  # steps over which a 0 -> 1 mask fades the new layers or units in (ops.ramp)
LEARN, LEARN_LR = "learn", "learn_lr"  # a phase that trains the growth map alone, then bakes it (LiGO)


@dataclass(frozen=True)
class Option:
    """A setting written after the operator's name in a schedule.

    words: what comes before the value (`ramp`, `at lr`), or "" for the option given by a bare
    amount right after the name (`init learn 10 steps`). kind "steps": an amount in steps or
    tokens, made steps at the next stage's batch; kind "number": a plain number, at least `low`
    (above it unless `inclusive`)."""

    name: str
    words: str
    kind: Literal["steps", "number"]
    default: float
    help: str
    low: float = 0.0
    inclusive: bool = False
    high: float | None = None  # a number's largest value (inclusive), if it has one


Start = Literal["copy", "silent", "fresh"]
Kind = Literal["depth", "width", "experts"]


@dataclass(frozen=True)
class Mode:
    """What an operator does along one axis.

    starts: the word the layer map shows for the layers (depth) or units (width) it adds (`init`);
    new: what they are, for everything that treats them by kind (freezing by origin, the compiler's
    checks, the depth copy): "copy" (the source's weights: `freeze copies` takes them), "silent"
    (copied, their residual writers zero: identity blocks), "fresh" (the target's own initial
    weights: no root, never frozen before they train);
    first: depth only, how the first copy of each base layer starts. For upcycling (`experts`),
    starts is the word the layer map shows for the blocks that become mixtures, new what their
    experts are (`freeze copies` takes experts that start as copies)."""

    guarantee: Guarantee  # does the grown model compute the base's function?
    note: str  # why, in a line
    starts: str
    new: Start
    first: str = "copy"


@dataclass(frozen=True)
class Operator:
    name: str
    summary: str  # one line: what it is and where it comes from
    depth: Mode | None = None  # None: it does not grow depth
    width: Mode | None = None  # None: it does not grow width
    experts: Mode | None = None  # None: it does not upcycle a dense model into a mixture of experts
    options: tuple[Option, ...] = ()
    # A refusal of a growth it cannot make (source shape, target shape) -> the reason, or None.
    refuses: Callable[[ModelShape, ModelShape], str | None] | None = None

    def mode(self, kind: Kind) -> Mode | None:
        return {"depth": self.depth, "width": self.width, "experts": self.experts}[kind]

    @property
    def kinds(self) -> list[Kind]:
        """What it grows."""
        return [k for k in ("depth", "width", "experts") if self.mode(k) is not None]

    def option(self, words: str) -> Option | None:
        return next((o for o in self.options if o.words == words), None)


T = TypeVar("T")


def discover(package: str, path: Iterable[str], kind: type[T]) -> dict[str, T]:
    """The `OPERATOR` of every module of a package that defines one (a `kind`), by its name."""
    found: dict[str, T] = {}
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        operator = getattr(importlib.import_module(f"{package}.{info.name}"), "OPERATOR", None)
        if isinstance(operator, kind):
            name = operator.name  # type: ignore[attr-defined]
            if name in found:
                raise ImportError(f"two growth operators are called {name!r}")
            found[name] = operator
    return found
