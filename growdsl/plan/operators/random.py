"""`init random [ramp AMOUNT]`: new layers or units start fresh and fade in (MSG-style masks)."""

from growdsl.plan.operator import RAMP, Mode, Operator, Option

OPERATOR = Operator(
    name="random",
    summary="new blocks or units start fresh, masked out, and fade in over a ramp (MSG, Yao et al. 2023)",
    depth=Mode("exact", "new blocks start masked out (mask 0) and fade in over the ramp", starts="random", new="fresh"),
    width=Mode("exact", "new units start masked out (mask 0) and fade in over the ramp", starts="random", new="fresh"),
    options=(
        Option(RAMP, "ramp", "steps", 5000, "how long the mask takes from 0 to 1 (the paper's code: 5000 steps)"),
    ),
)
