"""Every growth operator's torch side (growdsl.ops.operator), one module per operator, found by name:
a module that defines OPERATOR is an operator. The names are those of growdsl.plan.operators."""

from __future__ import annotations

from growdsl.ops.operator import GrowthOperator, Weights
from growdsl.ops.optimizer import State
from growdsl.plan.operator import discover
from growdsl.plan.plan import Growth

OPERATORS: dict[str, GrowthOperator] = discover(__name__, __path__, GrowthOperator)


def get(name: str) -> GrowthOperator:
    try:
        return OPERATORS[name]
    except KeyError:
        raise KeyError(f"no growth operator {name!r} in this growdsl (it has {', '.join(OPERATORS)})") from None


def grow(src: Weights, dst: Weights, growth: Growth) -> None:
    """Write `growth`'s grown weights into `dst` with its operator."""
    get(growth.operator).grow(src, dst, growth)


def grown_state(policy: str, state: State, growth: Growth, like: Weights | None = None) -> State:
    """What the grown model's AdamW starts from: nothing under `optimizer reset` (the paper), the
    operator's mapping of `state` under `optimizer carry` (`like`: the grown model's parameters)."""
    return {} if policy == "reset" else get(growth.operator).carry(state, growth, like)
