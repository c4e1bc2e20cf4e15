"""Every growth operator's description (growdsl.plan.operator), one module per operator, found here
by name: a module that defines OPERATOR is an operator."""

from __future__ import annotations

from growdsl.plan.operator import Operator, discover

DEFAULT = "direct"  # a growth without `init`


OPERATORS: dict[str, Operator] = discover(__name__, __path__, Operator)


def find(name: str) -> Operator | None:
    return OPERATORS.get(name)
