"""The paper's growth guidelines (Sec. 5): when to grow (d) and by how much (g).

    log10(d) = 0.88 * log10(N) + 163.27 / log10(C) - 5.74,   C = 6 * N * D

N: the grown (target) model's parameters; D: the tokens the target trains on; d: the tokens the
base model should train before growing. Llama2-7B on 2T tokens gives d = 11.11B."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

G_RECOMMENDED = 4
FITTED = (4e8, 1e10)  # the model sizes the paper fitted the guideline on (410M to 7B), with margin
G_RANGE = (2, 4)


@dataclass(frozen=True)
class Prediction:
    params: float  # N
    tokens: float  # D
    compute: float  # C = 6ND
    d: float  # tokens to train the base on before growing


def compute_budget(params: float, tokens: float) -> float:
    return 6.0 * params * tokens


def predict_d(params: float, tokens: float) -> Prediction:
    """Growth timing d for a target of `params` parameters trained on `tokens` tokens."""
    if not (0 < params < math.inf and 0 < tokens < math.inf):
        raise ValueError("params and tokens must be positive and finite")
    c = compute_budget(params, tokens)
    log_c = math.log10(c)
    if log_c <= 0:
        raise ValueError("compute budget too small for the fit (C must exceed 1 FLOP)")
    exponent = 0.88 * math.log10(params) + 163.27 / log_c - 5.74
    if exponent > 30:  # more tokens than exist: a budget far below anything the fit was made on
        raise ValueError(
            f"a compute budget of {c:.3g} FLOPs is far below the fit's (~1e20 and up): d would be "
            f"1e{exponent:.0f} tokens"
        )
    return Prediction(params, tokens, c, 10**exponent)


def g_in_range(g: float | Fraction) -> bool:
    return G_RANGE[0] <= g <= G_RANGE[1]
