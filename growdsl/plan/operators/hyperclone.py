"""`init hyperclone [noise X]`: HyperCloning (Samragh et al. 2024, "Scaling Smart"), width only.

Every width (dim, heads, kv heads, FFN) grows by a whole factor; each weight is the base's tiled,
with the fan-in of cloned inputs split among the clones, so every hidden vector is the base's
repeated and RMSNorm sees the same mean square: the logits are the base's. Zero-sum noise across
the clones of each input breaks their symmetry without changing the function."""

from growdsl.plan.operator import Mode, Operator, Option
from growdsl.plan.shape import ModelShape


def _whole_factors(src: ModelShape, dst: ModelShape) -> str | None:
    for name, old, new in (
        ("dim", src.dim, dst.dim),
        ("heads", src.n_heads, dst.n_heads),
        ("kv_heads", src.n_kv_heads, dst.n_kv_heads),
        ("ffn", src.ffn_dim, dst.ffn_dim),
    ):
        if new % old:
            return (
                f"hyperclone grows every width by a whole factor: {name} {old} -> {new} is x{new / old:.3g}; "
                f"use {name} {old * max(2, round(new / old))}, or init direct"
            )
    return None


OPERATOR = Operator(
    name="hyperclone",
    summary="HyperCloning: whole-factor width growth, tiled clones, symmetry-breaking noise (Samragh et al. 2024)",
    width=Mode("exact", "tiled clones with split fan-in; the noise cancels across clones", starts="copy", new="copy"),
    options=(
        Option(
            "noise",
            "noise",
            "number",
            0.01,
            "the noise's std relative to each grown weight's RMS (0: none)",
            inclusive=True,
        ),
    ),
    refuses=_whole_factors,
)
