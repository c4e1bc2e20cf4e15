"""`init zero`: new layers or units start writing nothing into the residual stream."""

from growdsl.plan.operator import Mode, Operator

OPERATOR = Operator(
    name="zero",
    summary="new blocks or units start silent: their residual writers are zero",
    depth=Mode(
        "exact",
        "duplicated blocks start as identities (attention out and MLP down projections zeroed)",
        starts="zero",
        new="silent",
    ),
    width=Mode("exact", "new units start with zero fan-out; norms scaled by sqrt(d/D)", starts="zero", new="silent"),
)
