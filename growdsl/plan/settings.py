"""Training settings: one typed value each, as a schedule sets them (at top level for every stage
after, or with `with` for one stage), checked where they are written, then resolved into a stage's
TrainingConfig once its model and batch are known."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from growdsl.lang import ast
from growdsl.lang.errors import Span, did_you_mean
from growdsl.plan.freeze import WORDS
from growdsl.plan.plan import OptimizerConfig, Parallelism, TrainingConfig
from growdsl.plan.presets import Preset
from growdsl.plan.reading import MAX_COUNT, Interval, Reader, as_amount, as_number, as_string, as_word
from growdsl.plan.shape import ModelShape
from growdsl.plan.tasks import EVAL_TASKS

# Validation by default: about VAL_POINTS times over the run (and at every stage end), on 1% of the
# run's training tokens held out, between VAL_MIN_SEQS sequences and VAL_MAX_TOKENS: its forward
# passes then cost about a tenth of the training compute or less (more on very short runs, where
# the VAL_MIN_SEQS floor dominates; `growdsl plan` shows the cost).
VAL_POINTS, VAL_SHARE, VAL_MIN_SEQS, VAL_MAX_TOKENS = 25, 0.01, 16, 2**20

WSD_DECAY = 0.2  # wsd's decay by default: the last 20% of the schedule (Hagele et al. 2024 match cosine with it)

LR_KEYS = ("lr_max", "lr_min", "warmup", "lr_schedule")  # what a stage's own LR schedule is made of


@dataclass
class Settings:
    """Every setting in force at one point of a schedule."""

    lr_max: float
    lr_min: float
    warmup: Interval
    lr_schedule: Literal["cosine", "linear", "constant", "wsd"]
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    grad_clip: float
    batch: Interval | int  # tokens, or a number of sequences
    seq_len: int
    # wsd: the decay at the end of the schedule, a share of it (0.2) or an amount; and its shape
    lr_decay: Interval | float = WSD_DECAY
    lr_decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    micro_batch: int | None = None
    seed: int = 0
    data: str | None = None
    mix: tuple[tuple[str, float], ...] = ()  # a mixture: (prepared folder, weight) of each source
    freeze: tuple[str, ...] = ()  # what the stage does not train, by origin (growdsl.plan.freeze.WORDS)
    dp_shard: int | None = None
    dp_replicate: int = 1
    tp: int = 1
    ac: Literal["none", "selective", "full"] = "none"
    compile: bool = False
    mixed: Literal["auto", "bf16", "off"] = "auto"
    checkpoint: Interval | None = None
    eval_every: Interval | None = None
    eval_at_growth: bool = False
    eval_at_end: bool = False
    eval_tasks: tuple[str, ...] = ()
    val: bool = True
    val_every: Interval | None = None  # None: the run-wide default
    val_tokens: int | None = None  # None: the run-wide default
    where: dict[str, Span] = field(default_factory=dict)  # setting -> the statement that set it, for errors

    @staticmethod
    def of(preset: Preset) -> Settings:
        t = preset.training
        return Settings(
            lr_max=preset.lr_max,
            lr_min=preset.lr_min,
            warmup=Interval(t["warmup"][1], t["warmup"][0]),
            lr_schedule=t["lr_schedule"],
            betas=t["betas"],
            eps=t["eps"],
            weight_decay=t["weight_decay"],
            grad_clip=t["grad_clip"],
            batch=t["batch_seqs"],
            seq_len=t["seq_len"],
        )

    def copy(self) -> Settings:
        return replace(self, where=dict(self.where))


def apply_setting(reader: Reader, s: ast.Setting, target: Settings) -> list[str]:
    """Check one setting and write it into `target`; returns the names of the settings it set."""
    keys = _read(reader, s, target)
    for key in keys:
        target.where[key] = s.span
    return keys


MAX_LR = 1e4  # far past any use; tests make runs diverge with lr 1e3


def _read(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    """Read one setting into `t`; the fields it set (none where it is wrong: the reader has said why)."""
    if s.key in _REALS:
        return _real(reader, s, t)
    if s.key in _COUNTS:
        return _count(reader, s, t)
    if s.key in _WORDS:
        word = as_word(s.args[0])
        setattr(t, s.key, word == "on" if s.key == "compile" else word)  # the grammar admits only the Literal's words
        return [s.key]
    read = _READERS.get(s.key)
    if read is None:
        raise AssertionError(f"setting {s.key} is in the grammar but not in the compiler")
    return read(reader, s, t)


def _lr(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    a = s.args
    # AdamW's steps are about lr in size: past MAX_LR, lr and its products overflow float32 (1e39 crashed AdamW)
    hi = reader.real(as_number(a[0]), "lr", high=MAX_LR)
    lo = (
        reader.real(as_number(a[1]), "min LR", low_inclusive=True, high=MAX_LR)
        if len(a) > 1
        else (hi / 10 if hi else None)
    )
    if hi is None or lo is None:
        return []
    if lo > hi:
        reader.error(s.span, f"min LR {lo:g} is above max LR {hi:g}", "write lr MAX to MIN")
        return []
    t.lr_max, t.lr_min = hi, lo
    return ["lr_max", "lr_min"]


def _betas(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    b1 = reader.real(as_number(s.args[0]), "beta1", low_inclusive=True, high=1.0)
    b2 = reader.real(as_number(s.args[1]), "beta2", low_inclusive=True, high=1.0)
    if b1 is None or b2 is None:
        return []
    t.betas = (b1, b2)
    return ["betas"]


def _batch(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    num, unit = as_number(s.args[0]), as_word(s.args[1])
    if unit == "tokens":
        tokens = reader.count(num, "batch")
        batch: Interval | int | None = None if tokens is None else Interval(tokens, "tokens", s.span)
        least = tokens
    else:
        batch = least = reader.integer(num, "batch (sequences)")
    if batch is None or least is None:
        return []
    if least < 1:
        reader.error(num.span, "batch must be at least 1")
        return []
    t.batch = batch
    return ["batch"]


def _data(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    sources = _sources(reader, s.args)
    if sources is None:
        return []
    if len(sources) == 1 and sources[0][1] is None:
        t.data, t.mix = sources[0][0], ()
    else:
        t.data, t.mix = None, tuple((path, weight or 0.0) for path, weight in sources)
    return ["data"]


def _checkpoint(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    if as_word(s.args[0]) == "off":
        t.checkpoint = None
        return ["checkpoint"]
    every = reader.interval(as_amount(s.args[1]), "checkpoint interval")
    if every is None:
        return []
    t.checkpoint = every
    return ["checkpoint"]


def _lr_schedule(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    """`lr_schedule cosine`, or `lr_schedule wsd [decay 20% | decay 2000 steps | decay 2B] [linear|cosine|sqrt]`."""
    words = [a for a in s.args if isinstance(a, ast.Word)]
    kind = words[0].text
    if kind != "wsd":
        t.lr_schedule = kind  # type: ignore[assignment]  # the grammar admits only the Literal's words
        return ["lr_schedule"]
    decay: Interval | float = WSD_DECAY
    amount = next((a for a in s.args if isinstance(a, ast.Amount)), None)
    if amount is not None:
        read = _decay(reader, amount)
        if read is None:
            return []
        decay = read
    shapes = [w.text for w in words[1:] if w.text != "decay"]
    t.lr_schedule, t.lr_decay, t.lr_decay_shape = "wsd", decay, shapes[0] if shapes else "linear"  # type: ignore[assignment]
    return ["lr_schedule"]


def _decay(reader: Reader, amount: ast.Amount) -> Interval | float | None:
    """wsd's decay: a share of the schedule (`20%`) or an amount (`2000 steps`, `2B` tokens)."""
    num = amount.number
    if num is not None and num.unit == "%":
        if not 0 < num.value <= 100:
            reader.error(num.span, f"a decay of {num.text} is not a share of the schedule", "write e.g. decay 20%")
            return None
        return num.value / 100
    if amount.kind == "bare":
        assert num is not None  # only `auto` has no number
        reader.error(
            num.span,
            f"decay '{num.text}' has no unit: a share, steps or tokens?",
            "write decay 20% (of the schedule), decay 2000 steps, or decay 2B (tokens)",
        )
        return None
    return reader.interval(amount, "wsd decay")


def _warmup(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    warmup = reader.interval(as_amount(s.args[0]), "warmup")
    if warmup is None:
        return []
    t.warmup = warmup
    return ["warmup"]


_REALS = {  # setting: its field, whether 0 is allowed, the bound it stays below (None: none)
    "min_lr": ("lr_min", True, MAX_LR),
    "eps": ("eps", False, 1.0),
    "weight_decay": ("weight_decay", True, 100.0),
    "clip": ("grad_clip", True, None),
}
_COUNTS = {  # setting: its field, its least value
    "micro_batch": ("micro_batch", 1),
    "seq": ("seq_len", 1),
    "seed": ("seed", 0),
    "dp_shard": ("dp_shard", 1),
    "dp_replicate": ("dp_replicate", 1),
    "tp": ("tp", 1),
}
_WORDS = ("ac", "compile", "mixed")  # a word the grammar picks from a few


def _real(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    key, inclusive, high = _REALS[s.key]
    value = reader.real(as_number(s.args[0]), s.key, low_inclusive=inclusive, high=high)
    if value is None:
        return []
    setattr(t, key, value)
    return [key]


def _count(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    key, minimum = _COUNTS[s.key]
    maximum = 2**63 - 1 if s.key == "seed" else MAX_COUNT
    number = reader.integer(as_number(s.args[0]), s.key, minimum=minimum, maximum=maximum)
    if number is None:
        return []
    setattr(t, key, number)
    return [key]


def _eval(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    a = s.args
    word = as_word(a[0])
    if word == "off":
        t.eval_every, t.eval_at_growth, t.eval_at_end = None, False, False
    elif word == "every":
        every = reader.interval(as_amount(a[1]), "eval interval")
        if every is None:
            return []
        t.eval_every = every
    elif word == "at":
        if as_word(a[1]) == "growth":
            t.eval_at_growth = True
        else:
            t.eval_at_end = True
    else:  # tasks
        named = as_string(a[1])
        tasks = tuple(x for x in named.value.replace(",", " ").split() if x)
        if not tasks:
            reader.error(named.span, "no eval tasks named", 'e.g. eval tasks "arc_easy piqa heldout"')
            return []
        unknown = [x for x in tasks if x not in EVAL_TASKS]
        if unknown:
            reader.error(
                named.span,
                f"unknown eval task {unknown[0]!r}",
                did_you_mean(unknown[0], EVAL_TASKS) or f"tasks: {', '.join(EVAL_TASKS)}",
            )
            return []
        t.eval_tasks = tasks
    return ["eval"]


def _freeze(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    """`freeze base embeddings head`, or `freeze none` (growdsl.plan.freeze says what each word is)."""
    words = [as_word(w) for w in s.args]
    if words == ["none"]:
        t.freeze = ()
        return ["freeze"]
    if "none" in words:
        reader.error(s.span, "freeze none stands alone: it trains everything", "write freeze none, or name parts")
        return []
    ok = True
    for w, value in zip(words, s.args):
        if w not in WORDS:
            hint = did_you_mean(w, [*WORDS, "none"]) or f"freeze takes {', '.join(WORDS)}, or none"
            reader.error(value.span, f"unknown part {w!r} to freeze", hint)
            ok = False
    if ok and len(set(words)) < len(words):
        reader.error(s.span, "a part is named twice", "name each once")
        ok = False
    if not ok:
        return []
    t.freeze = tuple(words)
    return ["freeze"]


def _val(reader: Reader, s: ast.Setting, t: Settings) -> list[str]:
    a = s.args
    word = as_word(a[0])
    if word == "off":
        t.val = False
    elif word == "every":
        every = reader.interval(as_amount(a[1]), "val interval")
        if every is None:
            return []
        t.val, t.val_every = True, every
    else:  # tokens
        count = reader.count(as_number(a[1]), "val tokens")
        if count is None:
            return []
        t.val, t.val_tokens = True, count
    return ["val"]


def training_config(reader: Reader, t: Settings, shape: ModelShape, span: Span) -> TrainingConfig | None:
    """The settings of a stage training `shape`, resolved at its batch; None (and errors) if they
    do not fit it."""
    seq, where = t.seq_len, t.where
    if isinstance(t.batch, Interval):
        if t.batch.count % seq:
            seqs = max(1, round(t.batch.count / seq))
            reader.error(
                where.get("batch", span),
                f"batch of {t.batch.count:,} tokens is not a whole number of {seq}-token sequences",
                f"use batch {seqs} seqs ({seqs * seq:,} tokens)",
            )
            return None
        batch_seqs = t.batch.count // seq
    else:
        batch_seqs = t.batch
    if t.micro_batch is not None and batch_seqs % t.micro_batch:
        reader.error(
            where.get("micro_batch", span),
            f"micro_batch {t.micro_batch} does not divide the batch of {batch_seqs} sequences",
            "every step is micro_batch x data-parallel ranks x accumulation steps",
        )
        return None
    if shape.experts is not None and t.tp > 1:
        reader.error(
            where.get("tp", span),
            f"tp {t.tp} with a mixture of experts: growdsl has no tensor-parallel plan for torchtitan's MoE",
            "shard it with dp_shard (FSDP2) instead",
        )
        return None
    if shape.n_heads % t.tp or shape.n_kv_heads % t.tp:
        reader.error(
            where.get("tp", span),
            f"tp {t.tp} does not divide {shape.n_heads} heads and {shape.n_kv_heads} kv heads",
            "tensor parallelism splits whole heads across ranks",
        )
        return None
    if seq % t.tp:
        reader.error(
            where.get("tp", span),
            f"tp {t.tp} does not divide the sequence length {seq}",
            "tensor parallelism also splits each sequence across its ranks (sequence parallel) between blocks",
        )
        return None
    tps = batch_seqs * seq

    def every(interval: Interval | None, what: str) -> int | None:
        return None if interval is None else reader.steps(interval, tps, what)

    return TrainingConfig(
        seq_len=seq,
        batch_seqs=batch_seqs,
        micro_batch=t.micro_batch,
        seed=t.seed,
        data=t.data,
        mix=t.mix,
        optimizer=OptimizerConfig(betas=t.betas, eps=t.eps, weight_decay=t.weight_decay, grad_clip=t.grad_clip),
        parallel=Parallelism(
            dp_shard=t.dp_shard,
            dp_replicate=t.dp_replicate,
            tp=t.tp,
            activation_checkpoint=t.ac,
            compile=t.compile,
            mixed=t.mixed,
        ),
        checkpoint_every_steps=every(t.checkpoint, "checkpoint interval"),
        eval_every_steps=every(t.eval_every, "eval interval"),
        eval_at_growth=t.eval_at_growth,
        eval_at_end=t.eval_at_end,
        eval_tasks=t.eval_tasks,
        freeze=t.freeze,
        val_every_steps=every(t.val_every, "val interval") if t.val else None,
        val_tokens=_val_tokens(reader, t, span),
    )


def _val_tokens(reader: Reader, t: Settings, span: Span) -> int:
    if not t.val or t.val_tokens is None:
        return 0  # off, or the run-wide default (the compiler fills it in)
    if t.val_tokens < t.seq_len:
        reader.error(
            t.where.get("val", span),
            f"val tokens {t.val_tokens:,} is less than one {t.seq_len}-token sequence",
            f"validate on at least {t.seq_len} tokens, e.g. val tokens {VAL_MIN_SEQS * t.seq_len}",
        )
        return 0
    return t.val_tokens


def _sources(reader: Reader, args) -> list[tuple[str, float | None]] | None:
    """`data "a"`, or a mixture `data "a" 0.7 + "b" 0.3`: each source a prepared folder, each weight
    positive (a mixture names every weight; they need not sum to 1, they are shares)."""
    sources: list[tuple[str, float | None]] = []
    ok = True
    for value in args:
        if isinstance(value, ast.Str):
            if not value.value.strip():
                reader.error(value.span, "empty data path", 'name a prepared folder: data "corpus"')
                ok = False
            elif any(value.value == p for p, _ in sources):
                reader.error(value.span, f'"{value.value}" is named twice in one mixture', "give it one weight")
                ok = False
            sources.append((value.value, None))
        else:
            weight = reader.real(as_number(value), "a source's weight")
            if weight is None:
                ok = False
            sources[-1] = (sources[-1][0], weight)
    if ok and len(sources) > 1 and any(w is None for _, w in sources):
        missing = next(p for p, w in sources if w is None)
        reader.error(
            args[0].span, f'a mixture weighs every source: "{missing}" has no weight', 'e.g. data "a" 0.7 + "b" 0.3'
        )
        ok = False
    return sources if ok else None


_READERS: dict[str, Callable[[Reader, ast.Setting, Settings], list[str]]] = {
    "lr": _lr,
    "betas": _betas,
    "batch": _batch,
    "data": _data,
    "checkpoint": _checkpoint,
    "warmup": _warmup,
    "lr_schedule": _lr_schedule,
    "freeze": _freeze,
    "eval": _eval,
    "val": _val,
    "optimizer": lambda reader, s, t: [],  # adamw is the only optimizer, and the default
}
