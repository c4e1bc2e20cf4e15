"""`init learn [AMOUNT] [at lr X]`: LiGO (Wang et al. 2023): the grown weights are a learned linear
map of the base's, trained alone for a few steps, then baked in."""

from growdsl.plan.operator import LEARN, LEARN_LR, Mode, Operator, Option

OPERATOR = Operator(
    name="learn",
    summary="LiGO: a learned linear growth map, trained alone for a few steps and baked in (Wang et al. 2023)",
    depth=Mode("none", "LiGO starts at G_stack and learns the depth mixing", starts="learn", new="copy", first="learn"),
    width=Mode(
        "none", "LiGO width expansion: identity for old units, Gaussian rows for new ones", starts="learn", new="copy"
    ),
    options=(
        Option(LEARN, "", "steps", 100, "how long the map trains (the paper's code: 100 steps)"),
        Option(LEARN_LR, "at lr", "number", 7e-5, "the map's learning rate (the paper's code: 7e-5)"),
    ),
)
