"""Schedule AST -> Plan: give every statement its meaning, check it, resolve every number.

One pass walks the statements in order (settings hold from where they stand; growth statements
change the current shape at once), a backward pass resolves `auto` token amounts (each depends
on the tokens trained after it), then LR schedules, FLOPs and totals are laid out. Every error
found on the way is collected and raised together. What each kind of statement means lives beside
it: numbers in plan/reading, settings in plan/settings, shapes in plan/shapes, growths in
plan/growths, LR schedules in plan/lr; this module walks the schedule and assembles the plan."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from growdsl.lang import ast
from growdsl.lang.errors import Diagnostic, ScheduleError, did_you_mean
from growdsl.lang.parser import lark_parser
from growdsl.plan import guideline
from growdsl.plan.advice import advise
from growdsl.plan.freeze import flops_per_token, frozen_of, trainable_params
from growdsl.plan.growths import (
    GrowthDraft,
    build_growth,
    depth_growth,
    experts_growth,
    growth_knobs,
    operator_of,
    policies_of,
    width_growth,
)
from growdsl.plan.imported import HFModel, ModelFolderError, RunModel, is_run, read_hf, read_run
from growdsl.plan.layermap import MAX_LAYERS
from growdsl.plan.lr import LRStage, lr_schedules
from growdsl.plan.operators import start_kind
from growdsl.plan.plan import (
    Baseline,
    GrowthTiming,
    LayerOrigin,
    LRSchedule,
    Plan,
    PlanWarning,
    Stage,
    Start,
    Totals,
    TrainingConfig,
    validation_steps,
)
from growdsl.plan.presets import DEFAULT_PRESET, FAMILY, PRESETS, find_preset
from growdsl.plan.reading import Reader
from growdsl.plan.settings import (
    VAL_MAX_TOKENS,
    VAL_MIN_SEQS,
    VAL_POINTS,
    VAL_SHARE,
    Settings,
    apply_setting,
    training_config,
)
from growdsl.plan.shape import ModelShape, llama_ffn_dim
from growdsl.plan.shapes import check_same_shape, check_shape, resolve_width, shape_fields


@functools.cache
def _settings_keywords() -> frozenset[str]:
    """The statements that cannot change the model: the grammar's settings, and `growth` policies."""
    rules = lark_parser().rules
    return frozenset({r.expansion[0].name for r in rules if r.origin.name == "setting"} | {"growth"})


def compile_schedule(schedule: ast.Schedule) -> Plan:
    """The plan of a parsed schedule; raises ScheduleError with every error found."""
    return _Compiler(schedule).compile()


@dataclass
class _StageDraft:
    node: ast.Train
    shape: ModelShape
    layers: list[LayerOrigin]
    growths: list[GrowthDraft]
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


# Layers summed over every stage and growth of a schedule: the plan records each layer's origin per
# stage, so its cost grows with this. 100,000 is some 1,000 stages of a 96-layer model, far past any
# schedule, and plans in about a second at the most.
MAX_PLANNED_LAYERS = 100_000


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
        self.pending: list[GrowthDraft] = []
        self.stages: list[_StageDraft] = []
        self.broken = False  # a shape error happened: later shape checks would only echo it
        self.settings_unknown = False  # a setting did not parse: stages resolve no steps from settings
        self.last_setting: ast.Setting | None = None
        # `model from`: its name, folder (a checkpoint's), shape, tokens, and FLOPs when a run recorded them
        self.start: tuple[str, Path, ModelShape, int, int | None] | None = None
        self.growths_in_a_row = 0  # growths between the latest two train statements: freeze by origin needs 1
        self.planned_layers = 0  # layers over every stage and growth so far (see MAX_PLANNED_LAYERS)

    # ---- driver ----------------------------------------------------------------------------

    def compile(self) -> Plan:
        for st in self.schedule.statements:
            if isinstance(st, ast.Model):
                self._model(st)
            elif isinstance(st, ast.Setting):
                apply_setting(self, st, self.settings)
                self.last_setting = st
            elif isinstance(st, ast.GrowthDefaults):
                policies_of(self, st.policies, self.policy)
            elif isinstance(st, ast.Growth):
                self._growth(st)
                if self._past_planned_layers(st):
                    break
            elif isinstance(st, ast.Tournament):  # growdsl.plan.tournament plans each candidate on its own
                self.error(
                    st.span,
                    "a tournament (try ...) is a schedule for each candidate, not one schedule",
                    "run it with growdsl tournament, then its winner's schedule",
                )
                self.broken, self.shape = True, None
            elif isinstance(st, ast.Train):
                self._train(st)
                self.last_setting = None
                if self._past_planned_layers(st):
                    break
            elif (
                st.keyword not in _settings_keywords()
            ):  # a statement that did not parse, and may have changed the model
                self.broken, self.shape = True, None
            else:  # a setting that did not parse: what later stages resolve from settings is unknown
                self.settings_unknown = True
        if not self.schedule.syntax_errors:  # else a missing statement may be what these would miss
            self._finish_statements()
        if not self.errors():
            self._resolve_auto()
        if self.errors():
            raise ScheduleError(self._sorted())
        return self._build_plan()

    def _sorted(self) -> list[Diagnostic]:
        return sorted(self.diagnostics, key=lambda d: d.order)

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
        final = self.shape
        if final is not None and self.declared is not None and self.declared.experts is None:
            final = replace(final, experts=None)  # a dense model statement, its experts from an `upcycle`
        if self.declared is not None and final is not None and not self.broken and final != self.declared:
            assert self.model_node is not None  # it declared the shape
            self.warn(
                self.model_node.span,
                f"the schedule ends with a {final.describe()} model, not the declared {self.declared.describe()}",
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
        if node.source is not None:
            self._import(node, node.source)
            return
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
            if self.settings.where:  # the preset's settings would silently replace them
                first = min(self.settings.where.values(), key=lambda span: (span.line, span.col))
                self.error(
                    first,
                    "a setting before the model statement, whose preset sets its own",
                    "move the model statement to the top of the schedule",
                )
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
        given = shape_fields(self, node.fields)
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
        if not check_shape(self, self.family, node.span):
            self.broken = True
        elif self.family["n_layers"] is not None:
            self.declared = ModelShape(**self.family)

    def _import(self, node: ast.Model, source: ast.Str) -> None:
        """`model from "DIR" [trained N]`: stage 0 is that model, its shape as its config.json says."""
        folder = Path(source.value)
        if not folder.is_absolute() and self.schedule.filename not in ("<schedule>", "<baseline>"):
            folder = Path(self.schedule.filename).parent / folder  # a path is the schedule's
        try:
            model: HFModel | RunModel = read_run(folder) if is_run(folder) else read_hf(folder)
        except ModelFolderError as e:
            hint = None if is_run(folder) else "name a Hugging Face Llama folder (config.json, safetensors) or a run"
            self.error(source.span, str(e), hint)
            self.broken = True
            return
        tokens = model.tokens if isinstance(model, RunModel) else 0  # a run's cost is recorded
        if node.trained is not None:
            interval = self.interval(node.trained, "what the model was trained on")
            if interval is not None and interval.unit == "steps":
                self.error(node.trained.span, "`trained` takes tokens (steps are of a batch it does not know)",
                           "e.g. trained 2T")  # fmt: skip
            elif interval is not None:
                tokens = interval.count
        if isinstance(model, RunModel):  # its recorded cost, unless the schedule states another
            recorded = None if node.trained is not None else model.flops
            self.start = (source.value, model.checkpoint.resolve(), model.shape, tokens, recorded)
        else:
            self.start = (source.value, folder.resolve(), model.shape, tokens, None)
        self.shape = model.shape
        self.layers = [LayerOrigin(source=None, init="imported", root=i) for i in range(model.shape.n_layers)]

    # ---- growth ----------------------------------------------------------------------------

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
        policies_of(self, node.policies, policies)
        found = operator_of(self, node)
        if self.shape.experts is not None:  # its experts have no layer or unit maps
            self.error(
                node.span,
                f"this model has a mixture of experts ({self.shape.describe()}): growdsl grows dense models",
                "train it on without growing it, or start from a dense model",
            )
            draft = None
        elif found is None:
            draft = None
        elif node.kind == "widen":
            draft = width_growth(self, node, *found, policies, self.shape, self.layers)
        elif node.kind == "upcycle":
            draft = experts_growth(self, node, *found, policies, self.shape, self.layers)
        else:
            draft = depth_growth(self, node, *found, policies, self.shape, self.layers)
        if draft is None:
            self.broken = True
            self.shape = None  # later statements can no longer be checked against a shape
            return
        self.shape, self.layers = draft.shape, draft.layers
        self.pending.append(draft)

    def _past_planned_layers(self, node: ast.Growth | ast.Train) -> bool:
        """Count the layers a growth or a stage adds to the plan; past MAX_PLANNED_LAYERS, an error at
        `node`, and the rest of the schedule is not compiled."""
        self.planned_layers += len(self.layers)
        if self.planned_layers <= MAX_PLANNED_LAYERS:
            return False
        self.error(
            node.span,
            f"the schedule plans more than {MAX_PLANNED_LAYERS:,} layers over its stages and growths by here "
            f"(their layers summed): growdsl plans no more, so that planning stays instant",
            "merge stages: a setting changed with `with` or a growth of several steps at once needs no stage "
            "of its own",
        )
        return True

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
            check_same_shape(self, node.shape, self.shape)
        settings = self.settings.copy()
        overridden: set[str] = set()
        seen: dict[str, ast.Setting] = {}
        for s in node.settings:
            if s.key in seen:
                self.error(s.span, f"{s.key} is set twice for this stage", "keep one")
            seen[s.key] = s
            overridden.update(apply_setting(self, s, settings))
        if self.pending:
            self.growths_in_a_row = len(self.pending)
        draft = _StageDraft(node, self.shape, list(self.layers), self.pending, settings, overridden)
        self.pending = []
        if self.settings_unknown:
            draft.training = None
            if node.amount.kind != "auto":
                self.interval(node.amount, "the amount to train")
        else:
            draft.training = training_config(self, settings, self.shape, node.span)
        if draft.training is not None and draft.training.freeze:
            self._check_freeze(draft)
        if draft.training is not None:
            tps = draft.training.tokens_per_step
            for g in draft.growths:
                growth_knobs(self, g, tps)
            if node.amount.kind != "auto":
                r = self.amount(node.amount, tps, "the amount to train")
                if r:
                    draft.steps, draft.tokens = r
        self.stages.append(draft)

    def _check_freeze(self, draft: _StageDraft) -> None:
        """`freeze` must leave something to train, name parts the stage has, and keep a tied table whole."""
        words, span = draft.config.freeze, draft.settings.where.get("freeze", draft.node.span)
        frozen = frozen_of(words, draft.layers)
        if self.growths_in_a_row > 1 and {"base", "new", "copies"} & set(words):
            self.error(
                span,
                f"freeze {' '.join(words)}: the model grew {self.growths_in_a_row} times without training between, "
                f"so which layers are new is ambiguous",
                "train between the growths, or freeze only embeddings and head",
            )
            return
        if draft.growths:  # a layer frozen right after the growth that made it starts as it will stay
            kinds = {start_kind(draft.layers[i].init) for i in frozen.layers}
            if (frozen.embeddings or frozen.head) and any(
                g.kind == "width" and any(start_kind(o.init) == "fresh" for o in draft.layers) for g in draft.growths
            ):
                kinds.add("fresh")  # a width growth's fresh units are in the embeddings and head too
            if "fresh" in kinds:
                self.error(
                    span,
                    f"freeze {' '.join(words)} freezes layers (or units) this stage's growth starts at random: "
                    f"they would stay noise",
                    "train them first, or grow them with init zero or a copy",
                )
                return
            if "silent" in kinds:
                self.warn(span, f"freeze {' '.join(words)} freezes blocks this stage's growth starts at zero: "
                                f"they stay as they start")  # fmt: skip
        drops = [g for g in draft.growths if g.kind == "experts" and g.operator.name == "drop"]
        if drops and {"new", "copies"} & set(words) and _drop_ratio(drops[0]) > 0:
            self.warn(
                span,
                f"freeze {' '.join(words)} freezes experts whose Drop-Upcycling units start drawn afresh: they stay "
                f"as drawn",
                "train them, or upcycle with init direct",
            )
        if trainable_params(draft.shape, frozen) == 0:
            self.error(span, f"freeze {' '.join(words)}: nothing is left to train", "freeze less")
        elif draft.shape.tied_embeddings and frozen.embeddings != frozen.head:
            self.error(
                span,
                "the embeddings and the head are one table in this tied model: freeze both or neither",
                "add the other to the freeze",
            )
        if "new" in words and not frozen_of(("new",), draft.layers).blocks:
            self.warn(span, "freeze new: this stage's model has no layers a growth added")
        if "copies" in words and not frozen_of(("copies",), draft.layers).blocks:
            self.warn(span, "freeze copies: no layer a growth added starts as a copy in this stage's model")

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
        if shape.experts and not any(shape.experts.holds(i) for i in range(shape.n_layers)):
            self.error(
                node.span,
                f"experts every {shape.experts.every} blocks, in a {shape.n_layers}-block model: no block holds them",
                f"train at least {shape.experts.every} layers, or put experts in more blocks",
            )
            return None
        if node.shape is not None and node.shape.fields:
            return resolve_width(self, shape, node.shape.fields, node.shape.span, grow=False)
        return shape

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
        start = None
        if self.start is not None:
            name, folder, shape, tokens, recorded = self.start
            flops = shape.flops_per_token(self.stages[0].config.seq_len) * tokens if recorded is None else recorded
            kind: Literal["hf", "run"] = "run" if is_run(folder) else "hf"
            start = Start(
                name=name, folder=str(folder), kind=kind, shape=shape, tokens=tokens, flops=flops,
                recorded=recorded is not None,
            )  # fmt: skip
            cum_tokens, cum_flops = tokens, flops
        for i, d in enumerate(self.stages):
            frozen = frozen_of(d.config.freeze, d.layers)
            fpt = flops_per_token(d.shape, d.config.seq_len, frozen)
            growths = [build_growth(g, d.shape.flops_per_token(d.config.seq_len)) for g in d.growths]  # LiGO: all
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
                    frozen=frozen,
                    trainable_params=trainable_params(d.shape, frozen),
                )
            )
            self._stage_warnings(d)
            t = d.config
            if t.val_every_steps:
                points = len(validation_steps(global_step, d.n_steps, t.val_every_steps))
                val_flops += points * ((t.val_tokens // t.seq_len) * t.seq_len * fpt // 3)  # forward only
            global_step += d.n_steps
        for advice in advise(stages, start):
            node = self.stages[advice.stage].growths[advice.growth].node
            self.warn(node.span, advice.message, f"{advice.meaning} ({advice.source})")
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
            start=start,
        )

    def _lr_schedules(self) -> list[LRSchedule]:
        stages = [
            LRStage(
                d.node.span,
                frozenset(g.policies["lr"] for g in d.growths),
                frozenset(d.overridden),
                d.settings,
                d.config.tokens_per_step,
                d.n_steps,
            )
            for d in self.stages
        ]
        schedules = lr_schedules(self, stages)
        if schedules is None or self.errors():
            raise ScheduleError(self._sorted())
        return schedules

    def _timing(self, i: int, growths: list) -> GrowthTiming | None:
        if i == 0 or all(g.kind == "experts" for g in growths):  # the guideline is for growing dense models
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


def _drop_ratio(g: GrowthDraft) -> float:
    """The share of each expert's units a Drop-Upcycling draws afresh, as written or by default."""
    written = g.options.get("ratio")
    if written is not None and written.value is not None and written.value.number is not None:
        return written.value.number.value
    option = g.operator.option("")
    return option.default if option else 0.0


def _baseline(stages: list[Stage]) -> Baseline | None:
    """The final model from scratch on the nearest whole number of its steps to the same FLOPs."""
    if not any(s.growths for s in stages):
        return None
    final = stages[-1]
    per_step = final.shape.flops_per_token(final.training.seq_len) * final.training.tokens_per_step  # all trains
    steps = max(1, round(final.cumulative_flops / per_step))
    return Baseline(steps=steps, tokens=steps * final.training.tokens_per_step, flops=steps * per_step)
