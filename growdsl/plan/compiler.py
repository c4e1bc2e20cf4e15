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
from typing import Any

from growdsl.lang import ast
from growdsl.lang.errors import Diagnostic, ScheduleError, Span, did_you_mean
from growdsl.plan.tasks import EVAL_TASKS
from growdsl.plan import guideline, operators
from growdsl.plan.operator import LEARN, LEARN_LR, RAMP, Operator
from growdsl.plan.layermap import MAX_LAYERS, PatternError, connection_rate, gstack, interpolation, parse_pattern, pattern_of
from growdsl.plan.plan import (
    Baseline,
    DepthGrowth,
    GrowthTiming,
    LayerOrigin,
    LearnPhase,
    LRSchedule,
    OptimizerConfig,
    Parallelism,
    Plan,
    PlanWarning,
    Stage,
    Totals,
    TrainingConfig,
    WidthGrowth,
    validation_steps,
)
from growdsl.plan.presets import DEFAULT_PRESET, FAMILY, PRESETS, Preset, find_preset
from growdsl.plan.shape import ModelShape, llama_ffn_dim
from growdsl.plan.units import UNITS, human

MAX_COUNT = 10**7  # any width, depth, batch or sequence length
MAX_TOKENS = 10**16  # any token or step amount

LEARN_WARMUP = 50  # a learned growth map warms its LR up over min(this, half its steps)

# Validation by default: about VAL_POINTS times over the run (and at every stage end), on 1% of the
# run's training tokens held out, between VAL_MIN_SEQS sequences and VAL_MAX_TOKENS: its forward
# passes then cost about a tenth of the training compute or less (more on very short runs, where
# the VAL_MIN_SEQS floor dominates; `growdsl plan` shows the cost).
VAL_POINTS, VAL_SHARE, VAL_MIN_SEQS, VAL_MAX_TOKENS = 25, 0.01, 16, 2**20

_LR_KEYS = ("lr_max", "lr_min", "warmup", "lr_schedule")
# The statements that cannot change the model (the grammar's settings, and `growth` policies).
_SETTINGS = {"lr", "min_lr", "warmup", "lr_schedule", "optimizer", "betas", "eps", "weight_decay", "clip", "batch",
             "micro_batch", "seq", "seed", "data", "dp_shard", "dp_replicate", "tp", "ac", "compile", "checkpoint",
             "eval", "val", "growth"}


def compile_schedule(schedule: ast.Schedule) -> Plan:
    """The plan of a parsed schedule; raises ScheduleError with every error found."""
    return _Compiler(schedule).compile()


@dataclass
class _GrowthDraft:
    """A growth whose token-dependent knobs (ramp, LiGO phase) wait for the next stage's batch."""

    node: ast.Growth
    kind: str
    operator: Operator
    options: dict[str, ast.InitOption]  # the options as written, by name
    policies: dict[str, str]
    fields: dict[str, Any]  # the rest of DepthGrowth / WidthGrowth


@dataclass
class _StageDraft:
    node: ast.Train
    shape: ModelShape
    layers: list[LayerOrigin]
    growths: list[_GrowthDraft]
    settings: dict[str, Any]
    overridden: set[str]
    training: TrainingConfig | None = None
    tokens: int | None = None
    steps: int | None = None


class _Compiler:
    def __init__(self, schedule: ast.Schedule):
        self.schedule = schedule
        self.diagnostics: list[Diagnostic] = list(schedule.syntax_errors)
        preset = PRESETS[DEFAULT_PRESET]
        self.family: dict[str, Any] = asdict(preset.shape)
        self.declared: ModelShape | None = None  # the shape an explicit `model` statement names
        self.settings: dict[str, Any] = self._preset_settings(preset)
        self.policy = {"optimizer": "reset", "lr": "restart"}
        self.model_node: ast.Model | None = None
        self.shape: ModelShape | None = None
        self.layers: list[LayerOrigin] = []
        self.pending: list[_GrowthDraft] = []
        self.stages: list[_StageDraft] = []
        self.broken = False  # a shape error happened: later shape checks would only echo it
        self.last_setting: ast.Setting | None = None

    # ---- diagnostics -----------------------------------------------------------------------

    def error(self, span: Span | None, message: str, hint: str | None = None) -> None:
        diagnostic = Diagnostic(message, span, hint)
        if diagnostic not in self.diagnostics:  # a top-level setting checked again for every stage: once
            self.diagnostics.append(diagnostic)

    def warn(self, span: Span | None, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(message, span, hint, "warning"))

    # ---- driver ----------------------------------------------------------------------------

    def compile(self) -> Plan:
        for st in self.schedule.statements:
            if isinstance(st, ast.Model):
                self._model(st)
            elif isinstance(st, ast.Setting):
                self._apply_setting(st, self.settings)
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
        if not self._errors():
            self._resolve_auto()
        if self._errors():
            raise ScheduleError(self._sorted())
        return self._build_plan()

    def _errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def _sorted(self) -> list[Diagnostic]:
        return sorted(self.diagnostics, key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0))

    def _finish_statements(self) -> None:
        if not self.stages:
            if not self._errors():
                self.error(None, "nothing to train: the schedule has no `train` statement",
                           "start with a base model, e.g. train 6L for 10B; stack x4; train 300B")
            return
        if self.pending:
            g = self.pending[-1].node
            self.error(g.span, "growth at the end of the schedule: nothing trains the grown model",
                       "add a train statement after it, e.g. train 300B")
        if self.last_setting is not None:
            self.warn(self.last_setting.span, "setting after the last train statement has no effect",
                      "settings hold for the stages after them; move it up")
        if self.declared is not None and self.shape is not None and not self.broken and self.shape != self.declared:
            self.warn(self.model_node.span, f"the schedule ends with a {self.shape.describe()} model, "
                      f"not the declared {self.declared.describe()}",
                      "adjust the growth steps, or the model statement, so they agree")

    # ---- numbers ---------------------------------------------------------------------------

    def _int(self, num: ast.Number, what: str, minimum: int = 1, maximum: int = MAX_COUNT) -> int | None:
        if num.unit or not num.is_integer:
            self.error(num.span, f"{what} must be a whole number, not '{num.text}'")
            return None
        value = int(num.value)
        if not minimum <= value <= maximum:
            self.error(num.span, f"{what} must be between {minimum} and {maximum:,}, not {num.text}")
            return None
        return value

    def _float(self, num: ast.Number, what: str, low: float = 0.0, low_inclusive: bool = False,
               high: float | None = None) -> float | None:
        if num.unit:
            self.error(num.unit_span, f"{what} takes a plain number; '{num.unit}' is not a unit here",
                       f"write e.g. {num.text[: len(num.text) - len(num.unit)]}")
            return None
        v = num.value
        if not math.isfinite(v):
            self.error(num.span, f"{what} '{num.text}' is too large")
            return None
        if v < low or (v == low and not low_inclusive) or (high is not None and v >= high):
            bound = f"{'at least' if low_inclusive else 'above'} {low:g}" + (f" and below {high:g}" if high else "")
            self.error(num.span, f"{what} must be {bound}, not {num.text}")
            return None
        return v

    def _scaled(self, num: ast.Number, what: str, allow_units: bool = True) -> int | None:
        """A count with an optional K/M/B/T multiplier (10B = 10_000_000_000)."""
        scale = 1
        if num.unit:
            if num.unit not in UNITS or not allow_units:
                self._unknown_unit(num, what)
                return None
            scale = UNITS[num.unit]
        value = num.value * scale
        if not value <= MAX_TOKENS:
            self.error(num.span, f"{what} '{num.text}' is too large (at most {MAX_TOKENS:.0e})")
            return None
        if value != int(value):
            self.error(num.span, f"{what} '{num.text}' is not a whole number")
            return None
        return int(value)

    def _unknown_unit(self, num: ast.Number, what: str) -> None:
        if num.unit == "L":
            self.error(num.span, f"'{num.text}' is a layer count, not {what}",
                       "give the depth before the amount: train 6L for 10B")
            return
        hint = did_you_mean(num.unit, UNITS) if num.unit.upper() in UNITS else None
        self.error(num.unit_span, f"unknown unit '{num.unit}' in {what} '{num.text}'",
                   hint or "token amounts take K, M, B or T (10B = 10 billion tokens); or write N steps")

    def _amount(self, amount: ast.Amount, tokens_per_step: int, what: str) -> tuple[int, int] | None:
        """(steps, tokens) for an amount at a batch of `tokens_per_step`."""
        num = amount.number
        if amount.kind == "auto":
            self.error(amount.span, f"'auto' is not allowed for {what}",
                       "only a train statement's token amount can be auto (the growth timing d)")
            return None
        if amount.kind == "bare":
            self.error(num.span, f"'{num.text}' has no unit: steps or tokens?",
                       f"write {num.text} steps, or tokens with a unit such as 10M or 10B")
            return None
        count = self._scaled(num, what)
        if count is None:
            return None
        if amount.kind == "steps":
            if count < 1:
                self.error(num.span, f"{what} must be at least one step")
                return None
            return count, count * tokens_per_step
        if count < tokens_per_step:
            self.error(amount.span, f"{what} of {human(count)} tokens is less than one step "
                       f"({human(tokens_per_step)} tokens)",
                       f"train at least {human(tokens_per_step)} tokens, or use a smaller batch")
            return None
        steps = -(-count // tokens_per_step)
        return steps, steps * tokens_per_step

    # ---- model -----------------------------------------------------------------------------

    def _model(self, node: ast.Model) -> None:
        if self.stages:
            self.error(node.span, "the model must be declared before the first train statement",
                       "move the model statement to the top of the schedule")
            return
        if self.model_node is not None:
            self.error(node.span, "the model is declared twice",
                       f"merge it into the first model statement (line {self.model_node.span.line})")
            return
        self.model_node = node
        preset = None
        if node.preset is not None:
            name = node.preset.text
            preset = find_preset(name)
            if preset is None and name.lower() != FAMILY:
                names = [*PRESETS, FAMILY]
                self.error(node.preset.span, f"unknown model preset '{name}'",
                           did_you_mean(name, names) or f"presets: {', '.join(names)}")
                self.broken = True
                return
        if preset is not None:
            self.family = asdict(preset.shape)
            self.settings = self._preset_settings(preset)
        else:  # the bare family: every dimension by hand
            self.family = dict(dim=None, n_layers=None, n_heads=None, n_kv_heads=None, ffn_dim=None,
                               vocab_size=32000, norm_eps=1e-5, rope_theta=10000.0, tied_embeddings=False)
        given = self._shape_fields(node.fields)
        if given is None:
            self.broken = True
            return
        self.family.update(given)
        missing = [k for k in ("dim", "n_heads") if self.family[k] is None]
        if missing:
            names = " and ".join({"dim": "dim", "n_heads": "heads"}[k] for k in missing)
            self.error(node.span, f"incomplete model: {names} missing",
                       f"give them (model llama dim 512 heads 8 layers 8), or start from a preset: "
                       f"{', '.join(PRESETS)}")
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

    _FIELD_NAMES = {"dim": "dim", "heads": "n_heads", "kv_heads": "n_kv_heads", "ffn": "ffn_dim",
                    "layers": "n_layers", "vocab": "vocab_size"}

    def _shape_fields(self, fields: tuple[ast.Setting, ...]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        ok = True
        for f in fields:
            if f.key in self._FIELD_NAMES:
                value = self._int(f.args[0], f.key, maximum=MAX_LAYERS if f.key == "layers" else MAX_COUNT)
                key = self._FIELD_NAMES[f.key]
            elif f.key == "norm_eps":
                value, key = self._float(f.args[0], "norm_eps"), "norm_eps"
            elif f.key == "rope_theta":
                value, key = self._float(f.args[0], "rope_theta"), "rope_theta"
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
            self.error(span, f"dim {dim} does not divide by {heads} heads",
                       f"dim must be a multiple of heads; e.g. dim {dim // heads * heads or heads} "
                       f"or heads {_divisor_near(dim, heads)}")
            return False
        if heads % kv:
            self.error(span, f"{heads} heads do not divide into {kv} kv heads",
                       f"kv_heads must divide heads, e.g. kv_heads {_divisor_near(heads, kv)}")
            return False
        if (dim // heads) % 2:
            self.error(span, f"head_dim {dim // heads} (dim {dim} / {heads} heads) is odd: RoPE needs an even one",
                       "choose dim and heads so that dim / heads is even")
            return False
        return True

    # ---- settings --------------------------------------------------------------------------

    @staticmethod
    def _preset_settings(preset: Preset) -> dict[str, Any]:
        t = preset.training
        return dict(
            lr_max=preset.lr_max, lr_min=preset.lr_min, warmup=t["warmup"], lr_schedule=t["lr_schedule"],
            betas=t["betas"], eps=t["eps"], weight_decay=t["weight_decay"], grad_clip=t["grad_clip"],
            batch=("seqs", t["batch_seqs"]), micro_batch=None, seq_len=t["seq_len"], seed=0, data=None,
            dp_shard=None, dp_replicate=1, tp=1, ac="none", compile=False,
            checkpoint=None, eval_every=None, eval_at_growth=False, eval_at_end=False, eval_tasks=(),
            val=True, val_every=None, val_tokens=None,  # None: the run-wide default (see _validation)
            where={},  # setting key -> the span of the statement that set it, for errors
        )

    def _apply_setting(self, s: ast.Setting, target: dict[str, Any]) -> list[str]:
        """Validate one setting and write it into `target`; returns the keys it set."""
        keys = self._read_setting(s, target)
        for key in keys:
            target["where"][key] = s.span
        return keys

    def _read_setting(self, s: ast.Setting, target: dict[str, Any]) -> list[str]:
        a = s.args
        k = s.key
        if k == "lr":
            hi = self._float(a[0], "lr")
            lo = self._float(a[1], "min LR", low_inclusive=True) if len(a) > 1 else (hi / 10 if hi else None)
            if hi is None or lo is None:
                return []
            if lo > hi:
                self.error(s.span, f"min LR {lo:g} is above max LR {hi:g}", "write lr MAX to MIN")
                return []
            target.update(lr_max=hi, lr_min=lo)
            return ["lr_max", "lr_min"]
        simple = {
            "min_lr": ("lr_min", lambda: self._float(a[0], "min_lr", low_inclusive=True)),
            "eps": ("eps", lambda: self._float(a[0], "eps")),
            "weight_decay": ("weight_decay", lambda: self._float(a[0], "weight_decay", low_inclusive=True)),
            "clip": ("grad_clip", lambda: self._float(a[0], "clip", low_inclusive=True)),
            "micro_batch": ("micro_batch", lambda: self._int(a[0], "micro_batch")),
            "seq": ("seq_len", lambda: self._int(a[0], "seq")),
            "seed": ("seed", lambda: self._int(a[0], "seed", minimum=0, maximum=2**63 - 1)),
            "dp_shard": ("dp_shard", lambda: self._int(a[0], "dp_shard")),
            "dp_replicate": ("dp_replicate", lambda: self._int(a[0], "dp_replicate")),
            "tp": ("tp", lambda: self._int(a[0], "tp")),
            "lr_schedule": ("lr_schedule", lambda: a[0].text),
            "ac": ("ac", lambda: a[0].text),
            "compile": ("compile", lambda: a[0].text == "on"),
            "optimizer": ("optimizer", lambda: a[0].text),
            "warmup": ("warmup", lambda: self._checked_amount(a[0], "warmup")),
        }
        if k in simple:
            key, read = simple[k]
            value = read()
            if value is None:
                return []
            if key == "optimizer":
                return []  # adamw is the only optimizer, and the default
            target[key] = value
            return [key]
        if k == "betas":
            b1 = self._float(a[0], "beta1", low_inclusive=True, high=1.0)
            b2 = self._float(a[1], "beta2", low_inclusive=True, high=1.0)
            if b1 is None or b2 is None:
                return []
            target["betas"] = (b1, b2)
            return ["betas"]
        if k == "batch":
            num, unit = a[0], a[1].text
            if unit == "tokens":
                count = self._scaled(num, "batch")
            else:
                count = self._int(num, "batch (sequences)")
            if count is None:
                return []
            if count < 1:
                self.error(num.span, "batch must be at least 1")
                return []
            target["batch"] = ("tokens" if unit == "tokens" else "seqs", count)
            return ["batch"]
        if k == "data":
            if not a[0].value.strip():
                self.error(a[0].span, "empty data path", 'name a file or directory: data "corpus/train.bin"')
                return []
            target["data"] = a[0].value
            return ["data"]
        if k == "checkpoint":
            if a[0].text == "off":
                target["checkpoint"] = None
            else:
                if self._checked_amount(a[1], "checkpoint interval") is None:
                    return []
                target["checkpoint"] = a[1]
            return ["checkpoint"]
        if k == "eval":
            word = a[0].text
            if word == "off":
                target.update(eval_every=None, eval_at_growth=False, eval_at_end=False)
            elif word == "every":
                if self._checked_amount(a[1], "eval interval") is None:
                    return []
                target["eval_every"] = a[1]
            elif word == "at":
                target["eval_at_growth" if a[1].text == "growth" else "eval_at_end"] = True
            else:  # tasks
                tasks = tuple(t for t in a[1].value.replace(",", " ").split() if t)
                if not tasks:
                    self.error(a[1].span, "no eval tasks named", 'e.g. eval tasks "arc_easy piqa heldout"')
                    return []
                unknown = [t for t in tasks if t not in EVAL_TASKS]
                if unknown:
                    self.error(a[1].span, f"unknown eval task {unknown[0]!r}",
                               did_you_mean(unknown[0], EVAL_TASKS) or f"tasks: {', '.join(EVAL_TASKS)}")
                    return []
                target["eval_tasks"] = tasks
            return ["eval"]
        if k == "val":
            word = a[0].text
            if word == "off":
                target["val"] = False
            elif word == "every":
                if self._checked_amount(a[1], "val interval") is None:
                    return []
                target.update(val=True, val_every=a[1])
            else:  # tokens
                count = self._scaled(a[1], "val tokens")
                if count is None:
                    return []
                target.update(val=True, val_tokens=count)
            return ["val"]
        raise AssertionError(f"setting {k} is in the grammar but not in the compiler")

    def _checked_amount(self, amount: ast.Amount, what: str) -> ast.Amount | None:
        """Check an amount's unit now; it becomes steps once a stage's batch is known."""
        if amount.kind == "auto":
            self._amount(amount, 1, what)
            return None
        if amount.kind == "bare":
            self._amount(amount, 1, what)
            return None
        if self._scaled(amount.number, what) is None:
            return None
        return amount

    def _training(self, settings: dict[str, Any], shape: ModelShape, span: Span) -> TrainingConfig | None:
        seq = settings["seq_len"]
        where = settings["where"]
        unit, count = settings["batch"]
        if unit == "tokens":
            if count % seq:
                self.error(where.get("batch", span), f"batch of {count:,} tokens is not a whole number of {seq}-token sequences",
                           f"use batch {max(1, round(count / seq))} seqs ({max(1, round(count / seq)) * seq:,} tokens)")
                return None
            batch_seqs = count // seq
        else:
            batch_seqs = count
        micro = settings["micro_batch"]
        if micro is not None and batch_seqs % micro:
            self.error(where.get("micro_batch", span), f"micro_batch {micro} does not divide the batch of {batch_seqs} sequences",
                       "every step is micro_batch x data-parallel ranks x accumulation steps")
            return None
        tp = settings["tp"]
        if shape.n_heads % tp or shape.n_kv_heads % tp:
            self.error(where.get("tp", span), f"tp {tp} does not divide {shape.n_heads} heads and {shape.n_kv_heads} kv heads",
                       "tensor parallelism splits whole heads across ranks")
            return None
        tps = batch_seqs * seq

        def every(amount: ast.Amount | None, what: str) -> int | None:
            if amount is None:
                return None
            r = self._amount(amount, tps, what)
            return r[0] if r else None

        return TrainingConfig(
            seq_len=seq,
            batch_seqs=batch_seqs,
            micro_batch=micro,
            seed=settings["seed"],
            data=settings["data"],
            optimizer=OptimizerConfig(betas=settings["betas"], eps=settings["eps"],
                                      weight_decay=settings["weight_decay"], grad_clip=settings["grad_clip"]),
            parallel=Parallelism(dp_shard=settings["dp_shard"], dp_replicate=settings["dp_replicate"], tp=tp,
                                 activation_checkpoint=settings["ac"], compile=settings["compile"]),
            checkpoint_every_steps=every(settings["checkpoint"], "checkpoint interval"),
            eval_every_steps=every(settings["eval_every"], "eval interval"),
            eval_at_growth=settings["eval_at_growth"],
            eval_at_end=settings["eval_at_end"],
            eval_tasks=settings["eval_tasks"],
            val_every_steps=every(settings["val_every"], "val interval") if settings["val"] else None,
            val_tokens=self._val_tokens(settings, seq, span),
        )

    def _val_tokens(self, settings: dict[str, Any], seq: int, span: Span) -> int:
        count = settings["val_tokens"]
        if not settings["val"] or count is None:
            return 0  # off, or the run-wide default (filled in by _validation)
        if count < seq:
            self.error(settings["where"].get("val", span), f"val tokens {count:,} is less than one {seq}-token sequence",
                       f"validate on at least {seq} tokens, e.g. val tokens {VAL_MIN_SEQS * seq}")
            return 0
        return count

    # ---- growth ----------------------------------------------------------------------------

    def _policies(self, policies: tuple[ast.Policy, ...], target: dict[str, str]) -> None:
        seen: dict[str, ast.Policy] = {}
        for p in policies:
            if p.key in seen and seen[p.key].value.text != p.value.text:
                self.error(p.span, f"contradictory policies: {seen[p.key].value.text} and {p.value.text}",
                           f"keep one {p.key} policy")
            seen[p.key] = p
            target[p.key] = p.value.text

    def _growth(self, node: ast.Growth) -> None:
        if self.shape is None:
            if not self.stages and not self.broken:
                self.error(node.span, "growth before any training: there is no model to grow yet",
                           "train the base model first, e.g. train 6L for 10B")
            return
        policies = dict(self.policy)
        self._policies(node.policies, policies)
        found = self._operator(node)
        if found is None:
            draft = None
        elif node.kind == "widen":
            draft = self._width(node, *found, policies)
        else:
            draft = self._depth(node, *found, policies)
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
            self.error(name.span, f"unknown growth operator '{name.text}'",
                       did_you_mean(name.text, operators.OPERATORS) or f"operators: {', '.join(operators.OPERATORS)}")
            return None
        kind = "width" if node.kind == "widen" else "depth"
        if op.mode(kind) is None:
            able = [o.name for o in operators.OPERATORS.values() if o.mode(kind)]
            self.error(name.span, f"{op.name} does not grow {kind}: it grows {'depth' if op.depth else 'width'} only",
                       f"operators that grow {kind}: {', '.join(able)}")
            return None
        given: dict[str, ast.InitOption] = {}
        ok = True
        for written in node.init.options:
            option = op.option(written.words)
            what = f"'{written.words}' of init {op.name}" if option else ""
            if option is None:
                takes = "; ".join(f"{o.words + ' ' if o.words else ''}{'AMOUNT' if o.kind == 'steps' else 'NUMBER'}: "
                                  f"{o.help}" for o in op.options)
                self.error(written.span, f"init {op.name} takes no " +
                           (f"option '{written.words}'" if written.words else "bare amount"),
                           f"its options: {takes}" if takes else f"init {op.name} takes no options")
                ok = False
            elif option.name in given:
                self.error(written.span, f"{what} is given twice", "keep one")
                ok = False
            elif option.kind == "number" and written.value.kind != "bare":
                self.error(written.value.span, f"{what} takes a plain number", f"e.g. {option.words} {option.default:g}")
                ok = False
            elif option.kind == "number" and self._float(written.value.number, what, option.low,
                                                         option.inclusive) is None:
                ok = False
            else:
                given[option.name] = written
        return (op, given) if ok else None

    def _depth(self, node: ast.Growth, operator: Operator, options: dict[str, ast.InitOption],
               policies: dict[str, str]) -> _GrowthDraft | None:
        base = self.shape.n_layers
        factor = None
        if node.factor is not None:
            factor = node.factor.value
            if factor < 2:
                self.error(node.factor.span, f"x{factor} does not grow the model",
                           "a growth factor must be at least 2 (the paper uses 4)")
                return None
            if base * factor > MAX_LAYERS:
                self.error(node.factor.span, f"x{factor} makes {base * factor:,} layers, more than {MAX_LAYERS}")
                return None
        if node.kind == "interpolate":
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
                self.error(node.span, f"x{factor} and the pattern disagree: x{factor} makes {base * factor} layers "
                           f"from {base}, the pattern makes {len(sources)}",
                           f"drop x{factor}, or change the pattern to {base * factor} layers")
                return None
            g = len(sources) // base
            method = "stack" if len(sources) % base == 0 and sources == gstack(base, g) else "pattern"
            pattern = node.pattern.value
            unused = sorted(set(range(base)) - set(sources))
            if unused and len(sources) > base:
                self.warn(node.pattern.span, "the pattern drops base layers " + ", ".join(str(u + 1) for u in unused),
                          "their trained weights are not used by the grown model")
        elif factor is not None:
            sources, method = gstack(base, factor), "stack"
            pattern = pattern_of(sources)
        else:
            self.error(node.span, "stack needs a factor or a pattern", 'write stack x4, or stack layers "123456*4"')
            return None
        if len(sources) <= base:
            self.error(node.span, f"a growth that does not grow: {base} layers become {len(sources)}",
                       "the target must have more layers than the base")
            return None
        mode = operator.depth
        origins = []
        seen: set[int] = set()
        for src in sources:
            init = mode.first if src not in seen else mode.starts
            seen.add(src)
            root = None if init == "random" else self.layers[src].root
            origins.append(LayerOrigin(source=src, init=init, root=root))
        g = Fraction(len(sources), base)
        if not guideline.g_in_range(g):
            self.warn(node.span, f"growth factor g = {_fmt_fraction(g)} is outside the paper's 2-4",
                      f"the paper finds g between 2 and 4 best and uses g = {guideline.G_RECOMMENDED}")
        target = replace(self.shape, n_layers=len(sources))
        if operator.refuses and (why := operator.refuses(self.shape, target)):
            self.error(node.init.name.span, why)
            return None
        self.shape = target
        self.layers = origins
        return _GrowthDraft(node, "depth", operator, options, policies, dict(
            method=method, pattern=pattern, source_layers=base, target_layers=len(sources), factor=g,
            layer_map=tuple(origins), connection_rate=connection_rate(sources)))

    def _width(self, node: ast.Growth, operator: Operator, options: dict[str, ast.InitOption],
               policies: dict[str, str]) -> _GrowthDraft | None:
        old = self.shape
        target = self._resolve_width(old, node.fields, node.span, grow=True)
        if target is None:
            return None
        if operator.refuses and (why := operator.refuses(old, target)):
            self.error(node.init.name.span, why)
            return None
        self.shape = target
        starts = operator.width.starts
        self.layers = [LayerOrigin(source=i, init=starts, root=o.root) for i, o in enumerate(self.layers)]
        return _GrowthDraft(node, "width", operator, options, policies, dict(source=old, target=target))

    def _resolve_width(self, old: ModelShape, fields: tuple[ast.Setting, ...], span: Span, grow: bool) -> ModelShape | None:
        """The shape `fields` (dim/heads/kv_heads/ffn) ask for, keeping head_dim and the GQA group;
        an FFN not given scales with dim."""
        given = self._shape_fields(fields)
        if given is None:
            return None
        hd, group = old.head_dim, old.n_heads // old.n_kv_heads
        dim, heads = given.get("dim"), given.get("n_heads")
        if dim is None and heads is None:
            dim, heads = old.dim, old.n_heads
        elif dim is None:
            dim = heads * hd
        elif heads is None:
            if dim % hd:
                self.error(span, f"dim {dim} is not a whole number of {hd}-wide heads",
                           f"width changes by whole heads of head_dim {hd}: try dim {round(dim / hd) * hd}")
                return None
            heads = dim // hd
        elif dim != heads * hd:
            self.error(span, f"dim {dim} with {heads} heads changes head_dim from {hd} to {dim / heads:g}",
                       f"width changes by whole heads: dim {dim} needs {dim // hd} heads of {hd}")
            return None
        kv = given.get("n_kv_heads")
        if kv is None:
            if heads % group:
                self.error(span, f"{heads} heads do not keep the GQA group of {group} query heads per kv head",
                           "give kv_heads explicitly")
                return None
            kv = heads // group
        ffn = given.get("ffn_dim")
        if ffn is None:
            scaled = Fraction(old.ffn_dim * dim, old.dim)
            if scaled.denominator != 1:
                self.error(span, f"ffn {old.ffn_dim} does not scale to a whole width at dim {dim}",
                           "give ffn explicitly")
                return None
            ffn = int(scaled)
        shape = dict(asdict(old), dim=dim, n_heads=heads, n_kv_heads=kv, ffn_dim=ffn)
        if not self._check_shape(shape, span):
            return None
        if grow:
            for key, name in (("dim", "dim"), ("n_heads", "heads"), ("n_kv_heads", "kv_heads"), ("ffn_dim", "ffn")):
                if shape[key] < getattr(old, key):
                    self.error(span, f"widen cannot shrink {name}: {getattr(old, key)} -> {shape[key]}",
                               "width growth only adds units")
                    return None
            if (dim, ffn, kv) == (old.dim, old.ffn_dim, old.n_kv_heads):
                self.error(span, f"a growth that does not grow: the model is already dim {dim}, ffn {ffn}",
                           "name a larger width, e.g. widen dim " + str(2 * old.dim))
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
            self._check_same_shape(node.shape)
        settings = dict(self.settings, where=dict(self.settings["where"]))
        overridden: set[str] = set()
        seen: dict[str, ast.Setting] = {}
        for s in node.settings:
            if s.key in seen:
                self.error(s.span, f"{s.key} is set twice for this stage", "keep one")
            seen[s.key] = s
            overridden.update(self._apply_setting(s, settings))
        draft = _StageDraft(node, self.shape, list(self.layers), self.pending, settings, overridden)
        self.pending = []
        draft.training = self._training(settings, self.shape, node.span)
        if draft.training is not None:
            tps = draft.training.tokens_per_step
            for g in draft.growths:
                self._growth_knobs(g, tps)
            if node.amount.kind != "auto":
                r = self._amount(node.amount, tps, "the amount to train")
                if r:
                    draft.steps, draft.tokens = r
        self.stages.append(draft)

    def _check_without_shape(self, node: ast.Train) -> None:
        """What of a train statement can be checked without the model: its settings and its amount's unit."""
        settings = dict(self.settings, where=dict(self.settings["where"]))
        for s in node.settings:
            self._apply_setting(s, settings)
        if node.amount.kind != "auto":
            self._checked_amount(node.amount, "the amount to train")

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
            self.error(node.span, "missing model depth: neither the model nor this train statement gives layers",
                       "write train 6L for 10B, or add layers N to the model statement")
            return None
        shape = ModelShape(**fam)
        if node.shape is not None and node.shape.fields:
            return self._resolve_width(shape, node.shape.fields, node.shape.span, grow=False)
        return shape

    def _check_same_shape(self, shape: ast.Shape) -> None:
        if shape.layers is not None:
            num = shape.layers
            if num.unit == "L" and num.is_integer and int(num.value) != self.shape.n_layers:
                self.error(num.span, f"the model has {self.shape.n_layers} layers here, not {int(num.value)}",
                           "drop the layer count, or add a growth step before this train")
        for f in shape.fields:
            key = self._FIELD_NAMES.get(f.key)
            if key and f.args[0].is_integer and int(f.args[0].value) != getattr(self.shape, key):
                self.error(f.span, f"the model has {f.key} {getattr(self.shape, key)} here, not {f.args[0].text}",
                           "drop it, or add a widen step before this train")

    def _growth_knobs(self, g: _GrowthDraft, tps: int) -> None:
        """The operator's options, defaults filled in and amounts made steps at the stage's batch; the
        ones the trainer runs (a ramp, a learned map) become their own fields."""
        values: dict[str, float] = {}
        for option in g.operator.options:
            written = g.options.get(option.name)
            if written is None:
                values[option.name] = option.default
            elif option.kind == "steps":
                r = self._amount(written.value, tps, f"the {option.name} of init {g.operator.name}")
                if r is None:
                    return
                values[option.name] = r[0]
            else:
                values[option.name] = written.value.number.value
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
                self.error(draft.node.amount.span, "'auto' needs a growth right after this stage",
                           "auto trains the base for the guideline's d tokens, then grows; add e.g. stack x4")
                continue
            later = sum(s.tokens for s in self.stages[i + 1 :])
            d = guideline.predict_d(nxt.shape.params, later).d
            tps = draft.training.tokens_per_step
            draft.steps = max(1, math.ceil(d / tps))
            draft.tokens = draft.steps * tps

    # ---- plan --------------------------------------------------------------------------------

    def _validation(self) -> None:
        """Fill in the default validation where a stage has it on and left cadence or size open."""
        total_steps = sum(d.steps for d in self.stages)
        total_tokens = sum(d.tokens for d in self.stages)
        seq = self.stages[-1].training.seq_len
        every = max(1, math.ceil(total_steps / VAL_POINTS))
        size = min(VAL_MAX_TOKENS, max(VAL_MIN_SEQS * seq, round(VAL_SHARE * total_tokens)))
        size -= size % seq
        for d in self.stages:
            t = d.training
            if d.settings["val"]:
                d.training = replace(t, val_every_steps=t.val_every_steps or every, val_tokens=t.val_tokens or size)

    def _build_plan(self) -> Plan:
        lr = self._lr_schedules()
        self._validation()
        stages: list[Stage] = []
        cum_tokens = cum_flops = val_flops = global_step = 0
        for i, d in enumerate(self.stages):
            fpt = d.shape.flops_per_token(d.training.seq_len)
            growths = [self._build_growth(g, d) for g in d.growths]
            learn_tokens = sum(g.learn.tokens for g in growths if g.learn)
            flops = fpt * d.tokens + sum(g.learn.flops for g in growths if g.learn)
            cum_tokens += d.tokens + learn_tokens
            cum_flops += flops
            stages.append(Stage(
                index=i, line=d.node.span.line, shape=d.shape, growths=tuple(growths), layers=tuple(d.layers),
                params=d.shape.params, auto=d.node.amount.kind == "auto", tokens=d.tokens, steps=d.steps,
                flops_per_token=fpt, flops=flops, cumulative_tokens=cum_tokens, cumulative_flops=cum_flops,
                training=d.training, lr=lr[i], timing=self._timing(i, growths)))
            self._stage_warnings(d)
            t = d.training
            if t.val_every_steps:
                points = len(validation_steps(global_step, d.steps, t.val_every_steps))
                val_flops += points * ((t.val_tokens // t.seq_len) * t.seq_len * fpt // 3)  # forward only
            global_step += d.steps
        final = stages[-1]
        totals = Totals(tokens=cum_tokens, flops=cum_flops, params=final.params, baseline=_baseline(stages),
                        val_flops=val_flops)
        warnings = tuple(PlanWarning(message=w.message, hint=w.hint, **(w.span.__dict__ if w.span else
                                     dict(line=None, col=None, end_line=None, end_col=None)))
                         for w in self._sorted() if w.severity == "warning")
        return Plan(source=self.schedule.filename,
                    schedule_sha256=hashlib.sha256(self.schedule.source.encode()).hexdigest(),
                    stages=tuple(stages), totals=totals, warnings=warnings)

    def _build_growth(self, g: _GrowthDraft, stage: _StageDraft):
        mode = g.operator.mode(g.kind)
        fields = dict(g.fields)
        if "learn" in fields:
            learn = fields["learn"]
            fields["learn"] = LearnPhase(flops=learn["tokens"] * stage.shape.flops_per_token(stage.training.seq_len),
                                         **learn)
        cls = DepthGrowth if g.kind == "depth" else WidthGrowth
        return cls(operator=g.operator.name, guarantee=mode.guarantee, guarantee_note=mode.note, optimizer=g.policies["optimizer"],
                   lr=g.policies["lr"], line=g.node.span.line, **fields)

    def _lr_schedules(self) -> list[LRSchedule]:
        """Group stages into LR schedules: a new one at the start, at every growth with `lr restart`,
        and at a stage without growth that sets its own LR settings."""
        groups: list[list[int]] = []
        for i, d in enumerate(self.stages):
            policies = {g.policies["lr"] for g in d.growths}
            own = d.overridden & set(_LR_KEYS)
            if i == 0:
                groups.append([i])
            elif "continue" in policies and "restart" in policies:
                self.error(d.node.span, "contradictory lr policies in the growths before this stage",
                           "use one of lr restart / lr continue")
                groups.append([i])
            elif policies == {"continue"}:
                if own:
                    self.error(d.node.span, f"this stage continues the LR schedule (lr continue) but sets its own "
                               f"{', '.join(sorted(own))}", "drop the stage's LR settings, or use lr restart")
                groups[-1].append(i)
            elif policies == {"restart"} or own:
                groups.append([i])
            else:
                groups[-1].append(i)
        if self._errors():
            raise ScheduleError(self._sorted())
        out: list[LRSchedule] = [None] * len(self.stages)  # type: ignore[list-item]
        for group in groups:
            head = self.stages[group[0]]
            st = head.settings
            warmup_kind, warmup = (st["warmup"] if isinstance(st["warmup"], tuple) else (None, st["warmup"]))
            if warmup_kind == "steps":
                warmup_steps = warmup
            else:
                r = self._amount(warmup, head.training.tokens_per_step, "warmup")
                warmup_steps = r[0] if r else 0
            total = sum(self.stages[i].steps for i in group)
            start = 0
            for i in group:
                out[i] = LRSchedule(kind=st["lr_schedule"], max_lr=st["lr_max"], min_lr=st["lr_min"],
                                    warmup_steps=warmup_steps, total_steps=total, start_step=start)
                start += self.stages[i].steps
            if warmup_steps >= total:
                self.warn(head.node.span, f"warmup ({warmup_steps} steps) is as long as the schedule ({total} steps): "
                          "the LR never decays", "shorten the warmup or train longer")
        if self._errors():
            raise ScheduleError(self._sorted())
        return out

    def _timing(self, i: int, growths: list) -> GrowthTiming | None:
        if i == 0 or not growths:
            return None
        n = self.stages[i].shape.params
        big_d = sum(s.tokens for s in self.stages[i:])
        p = guideline.predict_d(n, big_d)
        depth = [g for g in growths if g.kind == "depth"]
        factor = math.prod(g.factor for g in depth) if depth else None
        return GrowthTiming(target_params=n, target_tokens=big_d, compute=p.compute, predicted_d=p.d,
                            used_d=self.stages[i - 1].tokens, factor=factor)

    def _stage_warnings(self, d: _StageDraft) -> None:
        for g in d.growths:
            ramp = g.fields.get("ramp_steps")
            if ramp and ramp > d.steps:
                self.warn(g.node.span, f"the mask ramp ({ramp} steps) is longer than the stage ({d.steps} steps): "
                          "the new units never reach full strength", "shorten the ramp")


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
