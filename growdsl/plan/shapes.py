"""What a schedule's shape fields ask for: model fields read and checked, the divisibility every Llama
shape needs, and the wider shape a `widen` names (whole heads, the GQA group kept)."""

from __future__ import annotations

from dataclasses import asdict
from fractions import Fraction
from typing import Any

from growdsl.lang import ast
from growdsl.lang.errors import Span
from growdsl.plan.layermap import MAX_LAYERS
from growdsl.plan.reading import MAX_COUNT, Reader, as_number, as_word
from growdsl.plan.shape import Experts, ModelShape, RopeScaling

FIELD_NAMES = {
    "dim": "dim",
    "heads": "n_heads",
    "kv_heads": "n_kv_heads",
    "ffn": "ffn_dim",
    "layers": "n_layers",
    "vocab": "vocab_size",
}


def shape_fields(reader: Reader, fields: tuple[ast.Setting, ...]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    ok = True
    for f in fields:
        if f.key in FIELD_NAMES:
            value: int | float | bool | RopeScaling | Experts | None = reader.integer(
                as_number(f.args[0]), f.key, maximum=MAX_LAYERS if f.key == "layers" else MAX_COUNT
            )
            key = FIELD_NAMES[f.key]
        elif f.key in ("norm_eps", "rope_theta"):
            value, key = reader.real(as_number(f.args[0]), f.key), f.key
        elif f.key == "padded":
            value, key = True, "vocab_padded"
        elif f.key == "rope_scaling":
            value, key = _rope_scaling(reader, f), "rope_scaling"
        elif f.key == "experts":
            value, key = experts_of(reader, f), "experts"
        else:  # tied / untied
            value, key = f.key == "tied", "tied_embeddings"
        if value is None:
            ok = False
        elif key in out and out[key] != value:
            reader.error(f.span, f"{f.key} is given twice with different values", "keep one")
            ok = False
        out[key] = value
    return out if ok else None


MAX_EXPERTS = 4096  # far past any model's (DeepSeek-V3: 256)


def experts_of(reader: Reader, f: ast.Setting) -> Experts | None:
    """`experts 8 top 2 [shared 1] [every 2] [balance 1e-3] [aux_loss 0.01]`: every `every`-th block's
    feed-forward a mixture (growdsl.plan.shape.Experts)."""
    words = [a.text if isinstance(a, ast.Word) else None for a in f.args]
    numbers = {"count": f.args[0]}
    numbers |= {str(words[i - 1]): a for i, a in enumerate(f.args) if i and words[i - 1] and not words[i]}
    count = reader.integer(as_number(numbers["count"]), "experts", maximum=MAX_EXPERTS)
    top = reader.integer(as_number(numbers["top"]), "top (experts a token)", maximum=MAX_EXPERTS)
    shared = reader.integer(as_number(numbers["shared"]), "shared experts", minimum=0) if "shared" in numbers else 0
    every = (
        reader.integer(as_number(numbers["every"]), "every (blocks)", maximum=MAX_LAYERS) if "every" in numbers else 1
    )
    balance = reader.real(as_number(numbers["balance"]), "balance") if "balance" in numbers else None
    aux = reader.real(as_number(numbers["aux_loss"]), "aux_loss") if "aux_loss" in numbers else None
    unread = ("balance" in numbers and balance is None) or ("aux_loss" in numbers and aux is None)
    if None in (count, top, shared, every) or unread:
        return None
    assert count is not None and top is not None and shared is not None and every is not None
    if top > count:
        reader.error(
            numbers["top"].span, f"top {top} of {count} experts: a token cannot go to more experts than there are"
        )
        return None
    if balance is None and aux is None and top < count:
        reader.warn(
            f.span,
            "experts without load balancing: nothing keeps the router from sending most tokens to a few experts "
            "(the upcycling study: nearly every token to one, in its busiest block)",
            "add aux_loss 0.01 (Switch's loss; a Mixtral exports it) or balance 1e-3 (torchtitan's routing bias)",
        )
    if top == 1:
        reader.warn(
            numbers["top"].span,
            "top 1: the one picked score is renormalised to 1, so the language model's loss never trains the "
            "router: it routes by its starting weights (aux_loss only balances the experts)",
            "top 2 or more for a router that learns; top 1 routes like a hash layer",
        )
    return Experts(count=count, top_k=top, shared=shared, every=every, balance=balance, aux_loss=aux)


def _rope_scaling(reader: Reader, f: ast.Setting) -> RopeScaling | None:
    """`rope_scaling none [context]`, `linear FACTOR [context]`, `llama3 FACTOR LOW HIGH ORIGINAL`: RoPE
    as a model growdsl starts from computes it (growdsl's own: llama3 8 1 4 8192, the default)."""
    kind, numbers = as_word(f.args[0]), [as_number(a) for a in f.args[1:]]
    counts = {"none": (0, 1), "linear": (1, 2), "llama3": (4, 4)}
    if kind not in counts:
        reader.error(f.args[0].span, f"unknown RoPE scaling {kind!r}", "none, linear or llama3")
        return None
    low, high = counts[kind]
    if not low <= len(numbers) <= high:
        reader.error(f.span, f"rope_scaling {kind} takes {' to '.join(map(str, sorted({low, high})))} numbers",
                     "e.g. rope_scaling none 4096, rope_scaling linear 4, rope_scaling llama3 8 1 4 8192")  # fmt: skip
        return None
    has_context = len(numbers) > (kind == "linear")
    values = [reader.real(n, f"rope_scaling {kind}") for n in (numbers[:-1] if has_context else numbers)]
    length = reader.integer(numbers[-1], "rope_scaling's context length") if has_context else None
    if any(v is None for v in values) or (has_context and (length is None or length < 1)):
        if has_context and length is not None and length < 1:
            reader.error(numbers[-1].span, "a context length is at least 1")
        return None
    v = [float(x) for x in values if x is not None]
    context = {"original_max_position_embeddings": length} if length else {}
    if kind == "none":
        return RopeScaling(kind="none", factor=1.0, **context)
    if kind == "linear":
        return RopeScaling(kind="linear", factor=v[0], **context)
    return RopeScaling(kind="llama3", factor=v[0], low_freq_factor=v[1], high_freq_factor=v[2], **context)


def check_shape(reader: Reader, s: dict[str, Any], span: Span) -> bool:
    """Divisibility rules every Llama shape must satisfy."""
    dim, heads, kv = s["dim"], s["n_heads"], s["n_kv_heads"]
    if dim % heads:
        reader.error(
            span,
            f"dim {dim} does not divide by {heads} heads",
            f"dim must be a multiple of heads; e.g. dim {dim // heads * heads or heads} "
            f"or heads {_divisor_near(dim, heads)}",
        )
        return False
    if heads % kv:
        reader.error(
            span,
            f"{heads} heads do not divide into {kv} kv heads",
            f"kv_heads must divide heads, e.g. kv_heads {_divisor_near(heads, kv)}",
        )
        return False
    if (dim // heads) % 2:
        reader.error(
            span,
            f"head_dim {dim // heads} (dim {dim} / {heads} heads) is odd: RoPE needs an even one",
            "choose dim and heads so that dim / heads is even",
        )
        return False
    return True


def resolve_width(
    reader: Reader, old: ModelShape, fields: tuple[ast.Setting, ...], span: Span, grow: bool
) -> ModelShape | None:
    """The shape `fields` (dim/heads/kv_heads/ffn) ask for, keeping head_dim and the GQA group;
    an FFN not given scales with dim."""
    given = shape_fields(reader, fields)
    if given is None:
        return None
    hd, group = old.head_dim, old.n_heads // old.n_kv_heads
    dim: int | None = given.get("dim")
    heads: int | None = given.get("n_heads")
    if heads is None:  # from dim (the old one when neither is given)
        dim = old.dim if dim is None else dim
        if dim % hd:
            reader.error(
                span,
                f"dim {dim} is not a whole number of {hd}-wide heads",
                f"width changes by whole heads of head_dim {hd}: try dim {round(dim / hd) * hd}",
            )
            return None
        heads = dim // hd
    elif dim is None:
        dim = heads * hd
    elif dim != heads * hd:
        reader.error(
            span,
            f"dim {dim} with {heads} heads changes head_dim from {hd} to {dim / heads:g}",
            f"width changes by whole heads: dim {dim} needs {dim // hd} heads of {hd}",
        )
        return None
    kv = given.get("n_kv_heads")
    if kv is None:
        if heads % group:
            reader.error(
                span,
                f"{heads} heads do not keep the GQA group of {group} query heads per kv head",
                "give kv_heads explicitly",
            )
            return None
        kv = heads // group
    ffn = given.get("ffn_dim")
    if ffn is None:
        scaled = Fraction(old.ffn_dim * dim, old.dim)
        if scaled.denominator != 1:
            reader.error(span, f"ffn {old.ffn_dim} does not scale to a whole width at dim {dim}", "give ffn explicitly")
            return None
        ffn = int(scaled)
    shape = dict(asdict(old), dim=dim, n_heads=heads, n_kv_heads=kv, ffn_dim=ffn)
    if not check_shape(reader, shape, span):
        return None
    if grow:
        for key, name in (("dim", "dim"), ("n_heads", "heads"), ("n_kv_heads", "kv_heads"), ("ffn_dim", "ffn")):
            if shape[key] < getattr(old, key):
                reader.error(
                    span,
                    f"widen cannot shrink {name}: {getattr(old, key)} -> {shape[key]}",
                    "width growth only adds units",
                )
                return None
        if (dim, ffn, kv) == (old.dim, old.ffn_dim, old.n_kv_heads):
            reader.error(
                span,
                f"a growth that does not grow: the model is already dim {dim}, ffn {ffn}",
                "name a larger width, e.g. widen dim " + str(2 * old.dim),
            )
            return None
    return ModelShape(**shape)


def check_same_shape(reader: Reader, written: ast.Shape, shape: ModelShape) -> None:
    if written.layers is not None:
        num = written.layers
        if num.unit == "L" and num.is_integer and int(num.value) != shape.n_layers:
            reader.error(
                num.span,
                f"the model has {shape.n_layers} layers here, not {int(num.value)}",
                "drop the layer count, or add a growth step before this train",
            )
    for f in written.fields:
        key = FIELD_NAMES.get(f.key)
        value = as_number(f.args[0]) if key else None
        if key and value and value.is_integer and int(value.value) != getattr(shape, key):
            reader.error(
                f.span,
                f"the model has {f.key} {getattr(shape, key)} here, not {value.text}",
                "drop it, or add a widen step before this train",
            )


def _divisor_near(n: int, d: int) -> int:
    divisors = [k for k in range(1, n + 1) if n % k == 0]
    return min(divisors, key=lambda k: abs(k - d))
