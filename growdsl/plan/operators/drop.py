"""`init drop [RATIO] [noise X]`: Drop-Upcycling (Nakamura et al. 2025), upcycling only. Every expert
starts as a copy of the dense feed-forward with a share of its hidden units (each expert its own)
drawn afresh from the dense weights' statistics, so the experts differ from the first step; noise
perturbs every copy besides."""

from growdsl.plan.operator import Mode, Operator, Option

OPERATOR = Operator(
    name="drop",
    summary="Drop-Upcycling: experts copied, a share of each one's hidden units drawn afresh (Nakamura et al. 2025)",
    experts=Mode(
        "none",
        "a share of each expert's hidden units starts afresh: the mixture starts near the dense block, not at it",
        starts="dropped",
        new="copy",
    ),
    options=(
        Option(
            "ratio",
            "",
            "number",
            0.5,
            "the share of each expert's hidden units drawn afresh (the paper: 0.5; 0: plain copies)",
            inclusive=True,
            high=1.0,
        ),
        Option(
            "noise", "noise", "number", 0.0, "noise on every copy, its std relative to the weight's RMS", inclusive=True
        ),
    ),
)
