"""Growth statements: the operator and its options checked against its description, the depth map or
the wider shape resolved, policies, and the options that wait for the next stage's batch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from growdsl.lang import ast
from growdsl.lang.errors import Span, did_you_mean
from growdsl.plan import operators
from growdsl.plan.layermap import (
    MAX_LAYERS,
    PatternError,
    connection_rate,
    gstack,
    interpolation,
    parse_pattern,
    pattern_of,
    placed,
)
from growdsl.plan.operator import LEARN, LEARN_LR, RAMP, Kind, Operator
from growdsl.plan.operators import start_kind
from growdsl.plan.plan import DepthGrowth, ExpertsGrowth, LayerOrigin, LearnPhase, WidthGrowth
from growdsl.plan.reading import Reader
from growdsl.plan.shape import ModelShape
from growdsl.plan.shapes import experts_of, resolve_width

LEARN_WARMUP = 50  # a learned growth map warms its LR up over min(this, half its steps)

KINDS: dict[str, Kind] = {"stack": "depth", "interpolate": "depth", "widen": "width", "upcycle": "experts"}
VERBS: dict[Kind, str] = {"depth": "grow depth", "width": "grow width", "experts": "upcycle"}


@dataclass
class GrowthDraft:
    """A growth whose token-dependent knobs (ramp, LiGO phase) wait for the next stage's batch."""

    node: ast.Growth
    kind: Kind
    operator: Operator
    options: dict[str, ast.InitOption]  # the options as written, by name
    policies: dict[str, Any]  # optimizer: reset | carry, lr: restart | continue (the grammar's words)
    fields: dict[str, Any]  # the rest of DepthGrowth / WidthGrowth / ExpertsGrowth
    shape: ModelShape  # the model after it
    layers: list[LayerOrigin]  # where each of its layers comes from


def policies_of(reader: Reader, policies: tuple[ast.Policy, ...], target: dict[str, str]) -> None:
    """The growth policies written (`optimizer carry`, `lr continue`) into `target`, contradictions reported."""
    seen: dict[str, ast.Policy] = {}
    for p in policies:
        if p.key in seen and seen[p.key].value.text != p.value.text:
            reader.error(
                p.span,
                f"contradictory policies: {seen[p.key].value.text} and {p.value.text}",
                f"keep one {p.key} policy",
            )
        seen[p.key] = p
        target[p.key] = p.value.text


def operator_of(reader: Reader, node: ast.Growth) -> tuple[Operator, dict[str, ast.InitOption]] | None:
    """The growth's operator (`init NAME`, direct without one) and its options by name, checked
    against its description."""
    if node.init is None:
        return operators.OPERATORS[operators.DEFAULT], {}
    for extra in node.extra_inits:
        reader.error(extra.span, "init is given twice", f"keep one: this growth's operator is {node.init.name.text}")
        return None
    name = node.init.name
    op = operators.find(name.text)
    if op is None:
        reader.error(
            name.span,
            f"unknown growth operator '{name.text}'",
            did_you_mean(name.text, operators.OPERATORS) or f"operators: {', '.join(operators.OPERATORS)}",
        )
        return None
    kind = KINDS[node.kind]
    if op.mode(kind) is None:
        able = [o.name for o in operators.OPERATORS.values() if o.mode(kind)]
        reader.error(
            name.span,
            f"{op.name} does not {VERBS[kind]}: it can {' and '.join(VERBS[k] for k in op.kinds)}",
            f"operators that {VERBS[kind]}: {', '.join(able)}",
        )
        return None
    given: dict[str, ast.InitOption] = {}
    ok = True
    for written in node.init.options:
        option = op.option(written.words)
        what = f"'{option.words or option.name}' of init {op.name}" if option else ""
        if option is None:
            takes = "; ".join(
                f"{o.words + ' ' if o.words else ''}{'AMOUNT' if o.kind == 'steps' else 'NUMBER'}: {o.help}"
                for o in op.options
            )
            reader.error(
                written.span,
                f"init {op.name} takes no " + (f"option '{written.words}'" if written.words else "bare amount"),
                f"its options: {takes}" if takes else f"init {op.name} takes no options",
            )
            ok = False
        elif written.value is None:
            reader.error(
                written.span,
                f"{what} needs a value",
                f"e.g. {option.words} {option.default:g}{' steps' if option.kind == 'steps' else ''}",
            )
            ok = False
        elif option.name in given:
            reader.error(written.span, f"{what} is given twice", "keep one")
            ok = False
        elif (
            option.kind == "number"
            and reader.number_of(written.value, what, option.low, option.inclusive, option.high) is None
        ):
            ok = False
        else:
            given[option.name] = written
    return (op, given) if ok else None


def depth_growth(
    reader: Reader,
    node: ast.Growth,
    operator: Operator,
    options: dict[str, ast.InitOption],
    policies: dict[str, str],
    shape: ModelShape,
    layers: list[LayerOrigin],
) -> GrowthDraft | None:
    """A depth growth of `shape` (whether its factor is wise is growdsl.plan.advice's to say)."""
    base = shape.n_layers
    factor = None
    placement = None
    if node.factor is not None:
        factor = node.factor.value
        if factor < 2:
            reader.error(
                node.factor.span,
                f"x{factor} does not grow the model",
                "a growth factor must be at least 2 (the paper uses 4)",
            )
            return None
        if base * factor > MAX_LAYERS and node.placement is None:  # a placement repeats fewer (checked below)
            reader.error(node.factor.span, f"x{factor} makes {base * factor:,} layers, more than {MAX_LAYERS}")
            return None
    if node.kind == "interpolate":
        assert factor is not None  # the grammar requires it
        sources, method = interpolation(base, factor), "interpolate"
        pattern = pattern_of(sources)
    elif node.placement is not None:
        where = node.placement
        if node.pattern is not None:
            reader.error(
                node.pattern.span,
                f"a stack takes a placement ({where.where} ...) or a pattern, not both",
                "drop one: the pattern says every layer itself",
            )
            return None
        size = reader.integer(where.size, f"'{where.where}'", minimum=0)
        if size is None:
            return None
        if size < 1:
            reader.error(where.size.span, f"{where.where} 0 names no layers", f"name 1 to {base}")
            return None
        if size > base:
            what = f"every {size}th layer" if where.where == "after every" else f"a block of {size} layers"
            reader.error(
                where.size.span,
                f"{where.where} {size}: the base has {base} layers, too few for {what}",
                f"name at most {base}",
            )
            return None
        times = factor or 2
        sources = placed(where.where, size, times, base)
        if len(sources) > MAX_LAYERS:
            reader.error(where.span, f"the placement makes {len(sources):,} layers, more than {MAX_LAYERS}")
            return None
        method = "stack" if sources == gstack(base, len(sources) // base) else "pattern"
        pattern = pattern_of(sources)
        placement = f"{where.where} {size}" + (f" x{factor}" if factor else "")
    elif node.pattern is not None:
        try:
            sources = parse_pattern(node.pattern.value, base)
        except PatternError as e:
            col = node.pattern.span.col + 1 + e.start
            line = node.pattern.span.line
            reader.error(Span(line, col, line, col + e.length), e.message, e.hint)
            return None
        if factor is not None and len(sources) != base * factor:
            reader.error(
                node.span,
                f"x{factor} and the pattern disagree: x{factor} makes {base * factor} layers "
                f"from {base}, the pattern makes {len(sources)}",
                f"drop x{factor}, or change the pattern to {base * factor} layers",
            )
            return None
        g = len(sources) // base
        method = "stack" if len(sources) % base == 0 and sources == gstack(base, g) else "pattern"
        pattern = node.pattern.value
        unused = sorted(set(range(base)) - set(sources))
        if unused and len(sources) > base:
            reader.warn(
                node.pattern.span,
                "the pattern drops base layers " + ", ".join(str(u + 1) for u in unused),
                "their trained weights are not used by the grown model",
            )
    elif factor is not None:
        sources, method = gstack(base, factor), "stack"
        pattern = pattern_of(sources)
    else:
        reader.error(node.span, "stack needs a factor or a pattern", 'write stack x4, or stack layers "123456*4"')
        return None
    if len(sources) <= base:
        reader.error(
            node.span,
            f"a growth that does not grow: {base} layers become {len(sources)}",
            "the target must have more layers than the base",
        )
        return None
    mode = operator.depth
    assert mode is not None  # operator_of checked it grows depth
    origins = []
    seen: set[int] = set()
    for src in sources:
        init = mode.first if src not in seen else mode.starts
        seen.add(src)
        root = None if start_kind(init) == "fresh" else layers[src].root
        origins.append(LayerOrigin(source=src, init=init, root=root))
    ratio = Fraction(len(sources), base)
    target = replace(shape, n_layers=len(sources))
    if operator.refuses and (why := operator.refuses(shape, target)):
        reader.error(node.init.name.span if node.init else node.span, why)
        return None
    return GrowthDraft(
        node,
        "depth",
        operator,
        options,
        policies,
        dict(
            method=method,
            pattern=pattern,
            source_layers=base,
            target_layers=len(sources),
            factor=ratio,
            layer_map=tuple(origins),
            connection_rate=connection_rate(sources),
            placement=placement,
        ),
        target,
        origins,
    )


def width_growth(
    reader: Reader,
    node: ast.Growth,
    operator: Operator,
    options: dict[str, ast.InitOption],
    policies: dict[str, str],
    old: ModelShape,
    layers: list[LayerOrigin],
) -> GrowthDraft | None:
    target = resolve_width(reader, old, node.fields, node.span, grow=True)
    if target is None:
        return None
    if operator.refuses and (why := operator.refuses(old, target)):
        reader.error(node.init.name.span if node.init else node.span, why)
        return None
    assert operator.width is not None  # operator_of checked it grows width
    starts = operator.width.starts
    grown = [LayerOrigin(source=i, init=starts, root=o.root) for i, o in enumerate(layers)]
    return GrowthDraft(node, "width", operator, options, policies, dict(source=old, target=target), target, grown)


def experts_growth(
    reader: Reader,
    node: ast.Growth,
    operator: Operator,
    options: dict[str, ast.InitOption],
    policies: dict[str, str],
    shape: ModelShape,
    layers: list[LayerOrigin],
) -> GrowthDraft | None:
    """Upcycling: `shape`'s feed-forwards become mixtures of experts where `experts ... [every E]` says."""
    experts = experts_of(reader, node.fields[0])
    if experts is None:
        return None
    if not any(experts.holds(i) for i in range(shape.n_layers)):
        reader.error(
            node.fields[0].span,
            f"experts every {experts.every} blocks, in a {shape.n_layers}-block model: no block gets them",
            f"use every {shape.n_layers} or less",
        )
        return None
    mode = operator.experts
    assert mode is not None  # operator_of checked it upcycles
    grown = [
        LayerOrigin(source=i, init=mode.starts if experts.holds(i) else "copy", root=o.root)
        for i, o in enumerate(layers)
    ]
    target = replace(shape, experts=experts)
    return GrowthDraft(node, "experts", operator, options, policies, dict(experts=experts), target, grown)


def growth_knobs(reader: Reader, g: GrowthDraft, tps: int) -> None:
    """The operator's options, defaults filled in and amounts made steps at the stage's batch; the
    ones the trainer runs (a ramp, a learned map) become their own fields."""
    values: dict[str, float] = {}
    for option in g.operator.options:
        written = g.options.get(option.name)
        value = written.value if written else None  # operator_of kept only options given a value
        if value is None:
            values[option.name] = option.default
        elif option.kind == "steps":
            r = reader.amount(value, tps, f"the {option.words or 'amount'} of init {g.operator.name}")
            if r is None:
                return
            values[option.name] = r[0]
        else:
            assert value.number is not None  # operator_of checked it is a plain number
            values[option.name] = value.number.value
    if RAMP in values:
        g.fields["ramp_steps"] = int(values.pop(RAMP))
    if LEARN in values:
        steps, lr = int(values.pop(LEARN)), values.pop(LEARN_LR)
        g.fields["learn"] = dict(steps=steps, lr=lr, warmup_steps=min(LEARN_WARMUP, steps // 2), tokens=steps * tps)
    g.fields["options"] = values


def build_growth(g: GrowthDraft, flops_per_token: int) -> DepthGrowth | WidthGrowth | ExpertsGrowth:
    mode = g.operator.mode(g.kind)
    assert mode is not None  # operator_of checked it grows this way
    fields = dict(g.fields)
    if "learn" in fields:
        learn = fields["learn"]
        fields["learn"] = LearnPhase(flops=learn["tokens"] * flops_per_token, **learn)
    cls = {"depth": DepthGrowth, "width": WidthGrowth, "experts": ExpertsGrowth}[g.kind]
    return cls(
        operator=g.operator.name,
        guarantee=mode.guarantee,
        guarantee_note=mode.note,
        optimizer=g.policies["optimizer"],
        lr=g.policies["lr"],
        line=g.node.span.line,
        **fields,
    )
