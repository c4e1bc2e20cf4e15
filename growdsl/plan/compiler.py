"""Schedule AST -> Plan: give every statement its meaning, check it, resolve every number.

One pass walks the statements in order (settings hold from where they stand; growth statements
change the current shape at once), a backward pass resolves `auto` token amounts (each depends
on the tokens trained after it), then LR schedules, FLOPs and totals are laid out. Every error
found on the way is collected and raised together."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Any, Literal

from growdsl.lang import ast
from growdsl.lang.errors import Diagnostic, ScheduleError, Span, did_you_mean
from growdsl.plan import guideline, operators
from growdsl.plan.layermap import (
    MAX_LAYERS,
    PatternError,
    connection_rate,
    gstack,
    interpolation,
    parse_pattern,
    pattern_of,
)
from growdsl.plan.operator import LEARN, LEARN_LR, RAMP, Operator
from growdsl.plan.plan import (
    Baseline,
    DepthGrowth,
    GrowthTiming,
    LayerOrigin,
    LearnPhase,
    LRSchedule,
    Plan,
    PlanWarning,
    Stage,
    Totals,
    TrainingConfig,
    WidthGrowth,
    validation_steps,
)
from growdsl.plan.presets import DEFAULT_PRESET, FAMILY, PRESETS, find_preset
from growdsl.plan.reading import MAX_COUNT, Reader, as_number
from growdsl.plan.settings import (
    LR_KEYS,
    VAL_MAX_TOKENS,
    VAL_MIN_SEQS,
    VAL_POINTS,
    VAL_SHARE,
    Settings,
    apply_setting,
    training_config,
)
from growdsl.plan.shape import ModelShape, llama_ffn_dim

LEARN_WARMUP = 50  # a learned growth map warms its LR up over min(this, half its steps)


# The statements that cannot change the model (the grammar's settings, and `growth` policies).
_SETTINGS = {
    "lr",
    "min_lr",
    "warmup",
    "lr_schedule",
    "optimizer",
    "betas",
    "eps",
    "weight_decay",
    "clip",
    "batch",
    "micro_batch",
    "seq",
    "seed",
    "data",
    "dp_shard",
    "dp_replicate",
    "tp",
    "ac",
    "compile",
    "checkpoint",
    "eval",
    "val",
    "growth",
}


def compile_schedule(schedule: ast.Schedule) -> Plan:
    """The plan of a parsed schedule; raises ScheduleError with every error found."""
    return _Compiler(schedule).compile()


@dataclass
class _GrowthDraft:
    """A growth whose token-dependent knobs (ramp, LiGO phase) wait for the next stage's batch."""

    node: ast.Growth
    kind: Literal["depth", "width"]
    operator: Operator
    options: dict[str, ast.InitOption]  # the options as written, by name
    policies: dict[str, Any]  # optimizer: reset | carry, lr: restart | continue (the grammar's words)
    fields: dict[str, Any]  # the rest of DepthGrowth / WidthGrowth


@dataclass
class _StageDraft:
    node: ast.Train
    shape: ModelShape
    layers: list[LayerOrigin]
    growths: list[_GrowthDraft]
    settings: Settings
    overridden: set[str]
    training: TrainingConfig | None = None  # None: its settings do not fit its model (an error)
    tokens: int | None = None  # None: auto (until resolved), or an error
    steps: int | None = None

    # Every stage of a schedule without errors has all three: the plan is built only then.
    @property
    def config(self) -> TrainingConfig:
        assert self.training is not None
        return self.training

    @property
    def n_tokens(self) -> int:
        assert self.tokens is not None
        return self.tokens

    @property
    def n_steps(self) -> int:
        assert self.steps is not None
        return self.steps


class _Compiler(Reader):
    def __init__(self, schedule: ast.Schedule):
        super().__init__(list(schedule.syntax_errors))
        self.schedule = schedule
        preset = PRESETS[DEFAULT_PRESET]
        self.family: dict[str, Any] = asdict(preset.shape)
        self.declared: ModelShape | None = None  # the shape an explicit `model` statement names
        self.settings = Settings.of(preset)
        self.policy = {"optimizer": "reset", "lr": "restart"}
        self.model_node: ast.Model | None = None
        self.shape: ModelShape | None = None
        self.layers: list[LayerOrigin] = []
        self.pending: list[_GrowthDraft] = []
        self.stages: list[_StageDraft] = []
        self.broken = False  # a shape error happened: later shape checks would only echo it
        self.last_setting: ast.Setting | None = None

    # ---- driver ----------------------------------------------------------------------------

    def compile(self) -> Plan:
        for st in self.schedule.statements:
            if isinstance(st, ast.Model):
                self._model(st)
            elif isinstance(st, ast.Setting):
                apply_setting(self, st, self.settings)
                self.last_setting = st
            elif isinstance(st, ast.GrowthDefaults):
                self._policies(st.policies, self.policy)
            elif isinstance(st, ast.Growth):
                self._growth(st)
            elif isinstance(st, ast.Train):
                self._train(st)
                self.last_setting = None
            elif st.keyword not in _SETTINGS:  # a statement that did not parse, and may have changed the model
                self.broken, self.shape = True, None
        if not self.schedule.syntax_errors:  # else a missing statement may be what these would miss
            self._finish_statements()
        if not self.errors():
            self._resolve_auto()
        if self.errors():
            raise ScheduleError(self._sorted())
        return self._build_plan()

    def _sorted(self) -> list[Diagnostic]:
        return sorted(self.diagnostics, key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0))

    def _finish_statements(self) -> None:
        if not self.stages:
            if not self.errors():
                self.error(
                    None,
                    "nothing to train: the schedule has no `train` statement",
                    "start with a base model, e.g. train 6L for 10B; stack x4; train 300B",
                )
            return
        if self.pending:
            g = self.pending[-1].node
            self.error(
                g.span,
                "growth at the end of the schedule: nothing trains the grown model",
                "add a train statement after it, e.g. train 300B",
            )
        if self.last_setting is not None:
            self.warn(
                self.last_setting.span,
                "setting after the last train statement has no effect",
                "settings hold for the stages after them; move it up",
            )
        if self.declared is not None and self.shape is not None and not self.broken and self.shape != self.declared:
            assert self.model_node is not None  # it declared the shape
            self.warn(
                self.model_node.span,
                f"the schedule ends with a {self.shape.describe()} model, not the declared {self.declared.describe()}",
                "adjust the growth steps, or the model statement, so they agree",
            )

    # ---- model -----------------------------------------------------------------------------

    def _model(self, node: ast.Model) -> None:
        if self.stages:
            self.error(
                node.span,
                "the model must be declared before the first train statement",
                "move the model statement to the top of the schedule",
            )
            return
        if self.model_node is not None:
            self.error(
                node.span,
                "the model is declared twice",
                f"merge it into the first model statement (line {self.model_node.span.line})",
            )
            return
        self.model_node = node
        preset = None
        if node.preset is not None:
            name = node.preset.text
            preset = find_preset(name)
            if preset is None and name.lower() != FAMILY:
                names = [*PRESETS, FAMILY]
                self.error(
                    node.preset.span,
                    f"unknown model preset '{name}'",
                    did_you_mean(name, names) or f"presets: {', '.join(names)}",
                )
                self.broken = True
                return
        if preset is not None:
            self.family = asdict(preset.shape)
            self.settings = Settings.of(preset)
        else:  # the bare family: every dimension by hand
            self.family = dict(
                dim=None,
                n_layers=None,
                n_heads=None,
                n_kv_heads=None,
                ffn_dim=None,
                vocab_size=32000,
                norm_eps=1e-5,
                rope_theta=10000.0,
                tied_embeddings=False,
            )
        given = self._shape_fields(node.fields)
        if given is None:
            self.broken = True
            return
        self.family.update(given)
        missing = [k for k in ("dim", "n_heads") if self.family[k] is None]
        if missing:
            absent = " and ".join({"dim": "dim", "n_heads": "heads"}[k] for k in missing)
            self.error(
                node.span,
                f"incomplete model: {absent} missing",
                f"give them (model llama dim 512 heads 8 layers 8), or start from a preset: {', '.join(PRESETS)}",
            )
            self.broken = True
            return
        if self.family["n_kv_heads"] is None:
            self.family["n_kv_heads"] = self.family["n_heads"]
        if self.family["ffn_dim"] is None:
            self.family["ffn_dim"] = llama_ffn_dim(self.family["dim"])
        if not self._check_shape(self.family, node.span):
            self.broken = True
        elif self.family["n_layers"] is not None:
            self.declared = ModelShape(**self.family)

    _FIELD_NAMES = {
        "dim": "dim",
        "heads": "n_heads",
        "kv_heads": "n_kv_heads",
        "ffn": "ffn_dim",
        "layers": "n_layers",
        "vocab": "vocab_size",
    }

    def _shape_fields(self, fields: tuple[ast.Setting, ...]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        ok = True
        for f in fields:
            if f.key in self._FIELD_NAMES:
                value: int | float | bool | None = self.integer(
                    as_number(f.args[0]), f.key, maximum=MAX_LAYERS if f.key == "layers" else MAX_COUNT
                )
                key = self._FIELD_NAMES[f.key]
            elif f.key in ("norm_eps", "rope_theta"):
                value, key = self.real(as_number(f.args[0]), f.key), f.key
            else:  # tied / untied
                value, key = f.key == "tied", "tied_embeddings"
            if value is None:
                ok = False
            elif key in out and out[key] != value:
                self.error(f.span, f"{f.key} is given twice with different values", "keep one")
                ok = False
            out[key] = value
        return out if ok else None

    def _check_shape(self, s: dict[str, Any], span: Span) -> bool:
        """Divisibility rules every Llama shape must satisfy."""
        dim, heads, kv = s["dim"], s["n_heads"], s["n_kv_heads"]
        if dim % heads:
            self.error(
                span,
                f"dim {dim} does not divide by {heads} heads",
                f"dim must be a multiple of heads; e.g. dim {dim // heads * heads or heads} "
                f"or heads {_divisor_near(dim, heads)}",
            )
            return False
        if heads % kv:
            self.error(
                span,
                f"{heads} heads do not divide into {kv} kv heads",
                f"kv_heads must divide heads, e.g. kv_heads {_divisor_near(heads, kv)}",
            )
            return False
        if (dim // heads) % 2:
            self.error(
                span,
                f"head_dim {dim // heads} (dim {dim} / {heads} heads) is odd: RoPE needs an even one",
                "choose dim and heads so that dim / heads is even",
            )
            return False
        return True

    # ---- growth ----------------------------------------------------------------------------

    def _policies(self, policies: tuple[ast.Policy, ...], target: dict[str, str]) -> None:
        seen: dict[str, ast.Policy] = {}
        for p in policies:
            if p.key in seen and seen[p.key].value.text != p.value.text:
                self.error(
                    p.span,
                    f"contradictory policies: {seen[p.key].value.text} and {p.value.text}",
                    f"keep one {p.key} policy",
                )
            seen[p.key] = p
            target[p.key] = p.value.text

    def _growth(self, node: ast.Growth) -> None:
        if self.shape is None:
            if not self.stages and not self.broken:
                self.error(
                    node.span,
                    "growth before any training: there is no model to grow yet",
                    "train the base model first, e.g. train 6L for 10B",
                )
            return
        policies = dict(self.policy)
        self._policies(node.policies, policies)
        found = self._operator(node)
        if found is None:
            draft = None
        elif node.kind == "widen":
            draft = self._width(node, *found, policies, self.shape)
        else:
            draft = self._depth(node, *found, policies, self.shape)
        if draft is None:
            self.broken = True
            self.shape = None  # later statements can no longer be checked against a shape
            return
        self.pending.append(draft)

    def _operator(self, node: ast.Growth) -> tuple[Operator, dict[str, ast.InitOption]] | None:
        """The growth's operator (`init NAME`, direct without one) and its options by name, checked
        against its description."""
        if node.init is None:
            return operators.OPERATORS[operators.DEFAULT], {}
        name = node.init.name
        op = operators.find(name.text)
        if op is None:
            self.error(
                name.span,
                f"unknown growth operator '{name.text}'",
                did_you_mean(name.text, operators.OPERATORS) or f"operators: {', '.join(operators.OPERATORS)}",
            )
            return None
        kind: Literal["depth", "width"] = "width" if node.kind == "widen" else "depth"
        if op.mode(kind) is None:
            able = [o.name for o in operators.OPERATORS.values() if o.mode(kind)]
            self.error(
                name.span,
                f"{op.name} does not grow {kind}: it grows {'depth' if op.depth else 'width'} only",
                f"operators that grow {kind}: {', '.join(able)}",
            )
            return None
        given: dict[str, ast.InitOption] = {}
        ok = True
        for written in node.init.options:
            option = op.option(written.words)
            what = f"'{written.words}' of init {op.name}" if option else ""
            if option is None:
                takes = "; ".join(
                    f"{o.words + ' ' if o.words else ''}{'AMOUNT' if o.kind == 'steps' else 'NUMBER'}: {o.help}"
                    for o in op.options
                )
                self.error(
                    written.span,
                    f"init {op.name} takes no " + (f"option '{written.words}'" if written.words else "bare amount"),
                    f"its options: {takes}" if takes else f"init {op.name} takes no options",
                )
                ok = False
            elif option.name in given:
                self.error(written.span, f"{what} is given twice", "keep one")
                ok = False
            elif option.kind == "number" and self.number_of(written.value, what, option.low, option.inclusive) is None:
                ok = False
            else:
                given[option.name] = written
        return (op, given) if ok else None

    def _depth(
        self,
        node: ast.Growth,
        operator: Operator,
        options: dict[str, ast.InitOption],
        policies: dict[str, str],
        shape: ModelShape,
    ) -> _GrowthDraft | None:
        base = shape.n_layers
        factor = None
        if node.factor is not None:
            factor = node.factor.value
            if factor < 2:
                self.error(
                    node.factor.span,
                    f"x{factor} does not grow the model",
                    "a growth factor must be at least 2 (the paper uses 4)",
                )
                return None
            if base * factor > MAX_LAYERS:
                self.error(node.factor.span, f"x{factor} makes {base * factor:,} layers, more than {MAX_LAYERS}")
                return None
        if node.kind == "interpolate":
            assert factor is not None  # the grammar requires it
            sources, method = interpolation(base, factor), "interpolate"
            pattern = pattern_of(sources)
        elif node.pattern is not None:
            try:
                sources = parse_pattern(node.pattern.value, base)
            except PatternError as e:
                col = node.pattern.span.col + 1 + e.start
                line = node.pattern.span.line
                self.error(Span(line, col, line, col + e.length), e.message, e.hint)
                return None
            if factor is not None and len(sources) != base * factor:
                self.error(
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
                self.warn(
                    node.pattern.span,
                    "the pattern drops base layers " + ", ".join(str(u + 1) for u in unused),
                    "their trained weights are not used by the grown model",
                )
        elif factor is not None:
            sources, method = gstack(base, factor), "stack"
            pattern = pattern_of(sources)
        else:
            self.error(node.span, "stack needs a factor or a pattern", 'write stack x4, or stack layers "123456*4"')
            return None
        if len(sources) <= base:
            self.error(
                node.span,
                f"a growth that does not grow: {base} layers become {len(sources)}",
                "the target must have more layers than the base",
            )
            return None
        mode = operator.depth
        assert mode is not None  # _operator checked it grows depth
        origins = []
        seen: set[int] = set()
        for src in sources:
            init = mode.first if src not in seen else mode.starts
            seen.add(src)
            root = None if init == "random" else self.layers[src].root
            origins.append(LayerOrigin(source=src, init=init, root=root))
        ratio = Fraction(len(sources), base)
        if not guideline.g_in_range(ratio):
            self.warn(
                node.span,
                f"growth factor g = {_fmt_fraction(ratio)} is outside the paper's 2-4",
                f"the paper finds g between 2 and 4 best and uses g = {guideline.G_RECOMMENDED}",
            )
        target = replace(shape, n_layers=len(sources))
        if operator.refuses and (why := operator.refuses(shape, target)):
            self.error(node.init.name.span if node.init else node.span, why)
            return None
        self.shape = target
        self.layers = origins
        return _GrowthDraft(
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
            ),
        )

    def _width(
        self,
        node: ast.Growth,
        operator: Operator,
        options: dict[str, ast.InitOption],
        policies: dict[str, str],
        old: ModelShape,
    ) -> _GrowthDraft | None:
        target = self._resolve_width(old, node.fields, node.span, grow=True)
        if target is None:
            return None
        if operator.refuses and (why := operator.refuses(old, target)):
            self.error(node.init.name.span if node.init else node.span, why)
            return None
        assert operator.width is not None  # _operator checked it grows width
        self.shape = target
        starts = operator.width.starts
        self.layers = [LayerOrigin(source=i, init=starts, root=o.root) for i, o in enumerate(self.layers)]
        return _GrowthDraft(node, "width", operator, options, policies, dict(source=old, target=target))

    def _resolve_width(
        self, old: ModelShape, fields: tuple[ast.Setting, ...], span: Span, grow: bool
    ) -> ModelShape | None:
        """The shape `fields` (dim/heads/kv_heads/ffn) ask for, keeping head_dim and the GQA group;
        an FFN not given scales with dim."""
        given = self._shape_fields(fields)
        if given is None:
            return None
        hd, group = old.head_dim, old.n_heads // old.n_kv_heads
        dim: int | None = given.get("dim")
        heads: int | None = given.get("n_heads")
        if heads is None:  # from dim (the old one when neither is given)
            dim = old.dim if dim is None else dim
            if dim % hd:
                self.error(
                    span,
                    f"dim {dim} is not a whole number of {hd}-wide heads",
                    f"width changes by whole heads of head_dim {hd}: try dim {round(dim / hd) * hd}",
                )
                return None
            heads = dim // hd
        elif dim is None:
            dim = heads * hd
        elif dim != heads * hd:
            self.error(
                span,
                f"dim {dim} with {heads} heads changes head_dim from {hd} to {dim / heads:g}",
                f"width changes by whole heads: dim {dim} needs {dim // hd} heads of {hd}",
            )
            return None
        kv = given.get("n_kv_heads")
        if kv is None:
            if heads % group:
                self.error(
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
                self.error(
                    span, f"ffn {old.ffn_dim} does not scale to a whole width at dim {dim}", "give ffn explicitly"
                )
                return None
            ffn = int(scaled)
        shape = dict(asdict(old), dim=dim, n_heads=heads, n_kv_heads=kv, ffn_dim=ffn)
        if not self._check_shape(shape, span):
            return None
        if grow:
            for key, name in (("dim", "dim"), ("n_heads", "heads"), ("n_kv_heads", "kv_heads"), ("ffn_dim", "ffn")):
                if shape[key] < getattr(old, key):
                    self.error(
                        span,
                        f"widen cannot shrink {name}: {getattr(old, key)} -> {shape[key]}",
                        "width growth only adds units",
                    )
                    return None
            if (dim, ffn, kv) == (old.dim, old.ffn_dim, old.n_kv_heads):
                self.error(
                    span,
                    f"a growth that does not grow: the model is already dim {dim}, ffn {ffn}",
                    "name a larger width, e.g. widen dim " + str(2 * old.dim),
                )
                return None
        return ModelShape(**shape)

    # ---- training stages ----------------------------------------------------------------------

    def _train(self, node: ast.Train) -> None:
        first = not self.stages and self.shape is None
        if first:
            shape = self._base_shape(node)
            if shape is None:
                self.broken = True
                self._check_without_shape(node)
                return
            self.shape = shape
            self.layers = [LayerOrigin(source=None, init="fresh", root=i) for i in range(shape.n_layers)]
        elif self.shape is None:
            self._check_without_shape(node)  # an earlier error left no shape to train
            return
        elif node.shape is not None:
            self._check_same_shape(node.shape, self.shape)
        settings = self.settings.copy()
        overridden: set[str] = set()
        seen: dict[str, ast.Setting] = {}
        for s in node.settings:
            if s.key in seen:
                self.error(s.span, f"{s.key} is set twice for this stage", "keep one")
            seen[s.key] = s
            overridden.update(apply_setting(self, s, settings))
        draft = _StageDraft(node, self.shape, list(self.layers), self.pending, settings, overridden)
        self.pending = []
        draft.training = training_config(self, settings, self.shape, node.span)
        if draft.training is not None:
            tps = draft.training.tokens_per_step
            for g in draft.growths:
                self._growth_knobs(g, tps)
            if node.amount.kind != "auto":
                r = self.amount(node.amount, tps, "the amount to train")
                if r:
                    draft.steps, draft.tokens = r
        self.stages.append(draft)

    def _check_without_shape(self, node: ast.Train) -> None:
        """What of a train statement can be checked without the model: its settings and its amount's unit."""
        settings = self.settings.copy()
        for s in node.settings:
            apply_setting(self, s, settings)
        if node.amount.kind != "auto":
            self.interval(node.amount, "the amount to train")

    def _base_shape(self, node: ast.Train) -> ModelShape | None:
        if self.broken:
            return None
        fam = dict(self.family)
        if node.shape is not None and node.shape.layers is not None:
            num = node.shape.layers
            if num.unit != "L":
                if num.unit:
                    self.error(num.unit_span, f"'{num.text}' is not a layer count", "write the depth as NL, e.g. 6L")
                else:
                    self.error(num.span, f"layer count '{num.text}' needs an L", f"write {num.text}L")
                return None
            if not num.is_integer or num.value < 1:
                self.error(num.span, f"'{num.text}' is not a layer count", "write a whole number of layers, e.g. 6L")
                return None
            if num.value > MAX_LAYERS:
                self.error(num.span, f"{num.text} is more than {MAX_LAYERS} layers")
                return None
            fam["n_layers"] = int(num.value)
        if fam["n_layers"] is None:
            self.error(
                node.span,
                "missing model depth: neither the model nor this train statement gives layers",
                "write train 6L for 10B, or add layers N to the model statement",
            )
            return None
        shape = ModelShape(**fam)
        if node.shape is not None and node.shape.fields:
            return self._resolve_width(shape, node.shape.fields, node.shape.span, grow=False)
        return shape

    def _check_same_shape(self, written: ast.Shape, shape: ModelShape) -> None:
        if written.layers is not None:
            num = written.layers
            if num.unit == "L" and num.is_integer and int(num.value) != shape.n_layers:
                self.error(
                    num.span,
                    f"the model has {shape.n_layers} layers here, not {int(num.value)}",
                    "drop the layer count, or add a growth step before this train",
                )
        for f in written.fields:
            key = self._FIELD_NAMES.get(f.key)
            value = as_number(f.args[0]) if key else None
            if key and value and value.is_integer and int(value.value) != getattr(shape, key):
                self.error(
                    f.span,
                    f"the model has {f.key} {getattr(shape, key)} here, not {value.text}",
                    "drop it, or add a widen step before this train",
                )

    def _growth_knobs(self, g: _GrowthDraft, tps: int) -> None:
        """The operator's options, defaults filled in and amounts made steps at the stage's batch; the
        ones the trainer runs (a ramp, a learned map) become their own fields."""
        values: dict[str, float] = {}
        for option in g.operator.options:
            written = g.options.get(option.name)
            if written is None:
                values[option.name] = option.default
            elif option.kind == "steps":
                r = self.amount(written.value, tps, f"the {option.name} of init {g.operator.name}")
                if r is None:
                    return
                values[option.name] = r[0]
            else:
                number = written.value.number
                assert number is not None  # _operator checked it is a plain number
                values[option.name] = number.value
        if RAMP in values:
            g.fields["ramp_steps"] = int(values.pop(RAMP))
        if LEARN in values:
            steps, lr = int(values.pop(LEARN)), values.pop(LEARN_LR)
            g.fields["learn"] = dict(steps=steps, lr=lr, warmup_steps=min(LEARN_WARMUP, steps // 2), tokens=steps * tps)
        g.fields["options"] = values

    def _resolve_auto(self) -> None:
        """`train ... for auto`: d from the guideline, last stage first (d depends on the tokens after)."""
        for i in range(len(self.stages) - 1, -1, -1):
            draft = self.stages[i]
            if draft.node.amount.kind != "auto":
                continue
            nxt = self.stages[i + 1] if i + 1 < len(self.stages) else None
            if nxt is None or not nxt.growths:
                self.error(
                    draft.node.amount.span,
                    "'auto' needs a growth right after this stage",
                    "auto trains the base for the guideline's d tokens, then grows; add e.g. stack x4",
                )
                continue
            later = sum(s.n_tokens for s in self.stages[i + 1 :])
            d = guideline.predict_d(nxt.shape.params, later).d
            tps = draft.config.tokens_per_step
            draft.steps = max(1, math.ceil(d / tps))
            draft.tokens = draft.steps * tps

    # ---- plan --------------------------------------------------------------------------------

    def _validation(self) -> None:
        """Fill in the default validation where a stage has it on and left cadence or size open."""
        total_steps = sum(d.n_steps for d in self.stages)
        total_tokens = sum(d.n_tokens for d in self.stages)
        seq = self.stages[-1].config.seq_len
        every = max(1, math.ceil(total_steps / VAL_POINTS))
        size = min(VAL_MAX_TOKENS, max(VAL_MIN_SEQS * seq, round(VAL_SHARE * total_tokens)))
        size -= size % seq
        for d in self.stages:
            t = d.config
            if d.settings.val:
                d.training = replace(t, val_every_steps=t.val_every_steps or every, val_tokens=t.val_tokens or size)

    def _build_plan(self) -> Plan:
        lr = self._lr_schedules()
        self._validation()
        stages: list[Stage] = []
        cum_tokens = cum_flops = val_flops = global_step = 0
        for i, d in enumerate(self.stages):
            fpt = d.shape.flops_per_token(d.config.seq_len)
            growths = [self._build_growth(g, d) for g in d.growths]
            learn_tokens = sum(g.learn.tokens for g in growths if g.learn)
            flops = fpt * d.n_tokens + sum(g.learn.flops for g in growths if g.learn)
            cum_tokens += d.n_tokens + learn_tokens
            cum_flops += flops
            stages.append(
                Stage(
                    index=i,
                    line=d.node.span.line,
                    shape=d.shape,
                    growths=tuple(growths),
                    layers=tuple(d.layers),
                    params=d.shape.params,
                    auto=d.node.amount.kind == "auto",
                    tokens=d.n_tokens,
                    steps=d.n_steps,
                    flops_per_token=fpt,
                    flops=flops,
                    cumulative_tokens=cum_tokens,
                    cumulative_flops=cum_flops,
                    training=d.config,
                    lr=lr[i],
                    timing=self._timing(i, growths),
                )
            )
            self._stage_warnings(d)
            t = d.config
            if t.val_every_steps:
                points = len(validation_steps(global_step, d.n_steps, t.val_every_steps))
                val_flops += points * ((t.val_tokens // t.seq_len) * t.seq_len * fpt // 3)  # forward only
            global_step += d.n_steps
        final = stages[-1]
        totals = Totals(
            tokens=cum_tokens, flops=cum_flops, params=final.params, baseline=_baseline(stages), val_flops=val_flops
        )
        warnings = tuple(
            PlanWarning(
                message=w.message,
                hint=w.hint,
                **(w.span.__dict__ if w.span else dict(line=None, col=None, end_line=None, end_col=None)),
            )
            for w in self._sorted()
            if w.severity == "warning"
        )
        return Plan(
            source=self.schedule.filename,
            schedule_sha256=hashlib.sha256(self.schedule.source.encode()).hexdigest(),
            stages=tuple(stages),
            totals=totals,
            warnings=warnings,
        )

    def _build_growth(self, g: _GrowthDraft, stage: _StageDraft) -> DepthGrowth | WidthGrowth:
        mode = g.operator.mode(g.kind)
        assert mode is not None  # _operator checked it grows this way
        fields = dict(g.fields)
        if "learn" in fields:
            learn = fields["learn"]
            fields["learn"] = LearnPhase(
                flops=learn["tokens"] * stage.shape.flops_per_token(stage.config.seq_len), **learn
            )
        cls: type[DepthGrowth] | type[WidthGrowth] = DepthGrowth if g.kind == "depth" else WidthGrowth
        return cls(
            operator=g.operator.name,
            guarantee=mode.guarantee,
            guarantee_note=mode.note,
            optimizer=g.policies["optimizer"],
            lr=g.policies["lr"],
            line=g.node.span.line,
            **fields,
        )

    def _lr_schedules(self) -> list[LRSchedule]:
        """Group stages into LR schedules: a new one at the start, at every growth with `lr restart`,
        and at a stage without growth that sets its own LR settings."""
        groups: list[list[int]] = []
        for i, d in enumerate(self.stages):
            policies = {g.policies["lr"] for g in d.growths}
            own = d.overridden & set(LR_KEYS)
            if i == 0:
                groups.append([i])
            elif "continue" in policies and "restart" in policies:
                self.error(
                    d.node.span,
                    "contradictory lr policies in the growths before this stage",
                    "use one of lr restart / lr continue",
                )
                groups.append([i])
            elif policies == {"continue"}:
                if own:
                    self.error(
                        d.node.span,
                        f"this stage continues the LR schedule (lr continue) but sets its own {', '.join(sorted(own))}",
                        "drop the stage's LR settings, or use lr restart",
                    )
                groups[-1].append(i)
            elif policies == {"restart"} or own:
                groups.append([i])
            else:
                groups[-1].append(i)
        if self.errors():
            raise ScheduleError(self._sorted())
        out: list[LRSchedule] = [None] * len(self.stages)  # type: ignore[list-item]
        for group in groups:
            head = self.stages[group[0]]
            st = head.settings
            warmup_steps = self.steps(st.warmup, head.config.tokens_per_step, "warmup") or 0
            total = sum(self.stages[i].n_steps for i in group)
            start = 0
            for i in group:
                out[i] = LRSchedule(
                    kind=st.lr_schedule,
                    max_lr=st.lr_max,
                    min_lr=st.lr_min,
                    warmup_steps=warmup_steps,
                    total_steps=total,
                    start_step=start,
                )
                start += self.stages[i].n_steps
            if warmup_steps >= total:
                self.warn(
                    head.node.span,
                    f"warmup ({warmup_steps} steps) is as long as the schedule ({total} steps): the LR never decays",
                    "shorten the warmup or train longer",
                )
        if self.errors():
            raise ScheduleError(self._sorted())
        return out

    def _timing(self, i: int, growths: list) -> GrowthTiming | None:
        if i == 0 or not growths:
            return None
        n = self.stages[i].shape.params
        big_d = sum(s.n_tokens for s in self.stages[i:])
        p = guideline.predict_d(n, big_d)
        depth = [g for g in growths if g.kind == "depth"]
        factor = math.prod(g.factor for g in depth) if depth else None
        return GrowthTiming(
            target_params=n,
            target_tokens=big_d,
            compute=p.compute,
            predicted_d=p.d,
            used_d=self.stages[i - 1].n_tokens,
            factor=factor,
        )

    def _stage_warnings(self, d: _StageDraft) -> None:
        for g in d.growths:
            ramp = g.fields.get("ramp_steps")
            if ramp and ramp > d.n_steps:
                self.warn(
                    g.node.span,
                    f"the mask ramp ({ramp} steps) is longer than the stage ({d.n_steps} steps): "
                    "the new units never reach full strength",
                    "shorten the ramp",
                )


def _baseline(stages: list[Stage]) -> Baseline | None:
    """The final model from scratch on the nearest whole number of its steps to the same FLOPs."""
    if not any(s.growths for s in stages):
        return None
    final = stages[-1]
    per_step = final.flops_per_token * final.training.tokens_per_step
    steps = max(1, round(final.cumulative_flops / per_step))
    return Baseline(steps=steps, tokens=steps * final.training.tokens_per_step, flops=steps * per_step)


def _divisor_near(n: int, d: int) -> int:
    divisors = [k for k in range(1, n + 1) if n % k == 0]
    return min(divisors, key=lambda k: abs(k - d))


def _fmt_fraction(f: Fraction) -> str:
    return str(f.numerator) if f.denominator == 1 else f"{float(f):.2f}"
