"""`init direct` (the default): copies. Depth: every target layer is its source layer (G_stack,
the paper's operator). Width: Net2Net / bert2BERT neuron splitting. Upcycling: every expert is the
dense feed-forward (sparse upcycling, Komatsuzaki et al. 2023)."""

from growdsl.plan.operator import Mode, Operator

OPERATOR = Operator(
    name="direct",
    summary="copies: G_stack for depth (Du et al. 2024), neuron splitting for width (Net2Net, bert2BERT), "
    "experts copied from the feed-forward (sparse upcycling, Komatsuzaki et al. 2023)",
    depth=Mode(
        "none", "G_stack: the grown model starts near the base's function, not at it", starts="copy", new="copy"
    ),
    width=Mode(
        "approximate",
        "neuron splitting keeps the MLP exact; RMSNorm over the wider vector does not",
        starts="copy",
        new="copy",
    ),
    experts=Mode(
        "exact",
        "every expert is the dense feed-forward and the picked scores sum to 1: the mixture computes the dense block",
        starts="upcycled",
        new="copy",
    ),
)
