"""Every growth operator's description (growdsl.plan.operator), one module per operator, found here
by name: a module that defines OPERATOR is an operator."""

from __future__ import annotations

from growdsl.plan.operator import Operator, Start, discover

DEFAULT = "direct"  # a growth without `init`


OPERATORS: dict[str, Operator] = discover(__name__, __path__, Operator)


def find(name: str) -> Operator | None:
    return OPERATORS.get(name)


def _kinds() -> dict[str, Start]:
    """Every word a layer map may show, and what it makes of a layer: the words no operator owns (a
    base layer placed by a growth, a layer of stage 0), then each operator's, as it declares them."""
    kinds: dict[str, Start] = {"copy": "copy", "fresh": "fresh"}
    for op in OPERATORS.values():
        for mode in (op.depth, op.width, op.experts):
            if mode is None:
                continue
            for word, kind in ((mode.starts, mode.new), (mode.first, "copy" if mode.first == "copy" else mode.new)):
                if kinds.setdefault(word, kind) != kind:
                    raise ImportError(f"operator {op.name!r} makes {word!r} layers {kind}, another {kinds[word]}")
    return kinds


KINDS = _kinds()
# The words a layer map shows for the blocks an upcycling made mixtures (freezing by origin reads them).
UPCYCLED = frozenset(op.experts.starts for op in OPERATORS.values() if op.experts is not None)


def start_kind(word: str) -> Start:
    """What a layer map's `init` word makes of a layer (see Mode.new); a word no operator declares is a
    plan this growdsl did not make (KeyError)."""
    return KINDS[word]
