"""The paper's comparison for a growth schedule: its final model trained from scratch on the same
total FLOPs (the base models' and LiGO phases' compute included), written as a schedule of its own.
For an upcycling, the other comparison the upcycling papers make: the dense model continued instead,
on the same FLOPs (`continued`).

The baseline keeps everything but the growth: the final stage's batch, sequence length, LR schedule
(max, min, warmup, decay), optimizer, seed, data, parallelism, evaluation and validation settings,
so the two runs differ only in how the final model came to be. Its length is the whole number of
steps nearest to the schedule's total FLOPs."""

from __future__ import annotations

from pathlib import Path

from growdsl.errors import GrowdslError
from growdsl.lang import ast
from growdsl.plan.plan import Baseline, ExpertsGrowth, LRSchedule, Plan, Stage
from growdsl.plan.shape import Experts, RopeScaling

# What must agree across the stages after the last growth for one scratch schedule to mirror them.
_SAME = (
    ("seq_len", "seq"),
    ("batch_seqs", "batch"),
    ("seed", "seed"),
    ("optimizer", "optimizer settings"),
)


class BaselineError(GrowdslError):
    """The schedule has no meaningful from-scratch baseline; the message says why."""


def check(plan: Plan) -> Stage:
    """The stage whose settings the baseline takes (the final one); raises BaselineError if none fits."""
    grown = [s for s in plan.stages if s.growths]
    if not grown:
        raise BaselineError(
            "nothing grows in it: it already trains its final model from scratch, so it is its own baseline"
        )
    final = plan.stages[-1]
    first = plan.stages[0].training
    for stage in plan.stages[1:]:
        if (stage.training.data, stage.training.mix) != (first.data, first.mix):
            raise BaselineError(
                f"its stages read different data (lines {plan.stages[0].line} and {stage.line}); one scratch "
                f"run cannot mirror both: give every stage the same data, or write the baseline by hand"
            )
    for stage in plan.stages[grown[-1].index : -1]:
        for key, name in _SAME:
            if getattr(stage.training, key) != getattr(final.training, key):
                raise _differ(name, stage, final)
        lr, end = stage.lr, final.lr
        if _lr_settings(lr) != _lr_settings(end):
            raise _differ("LR schedule", stage, final)
    return final


def _lr_settings(lr: LRSchedule) -> tuple:
    """What a schedule states of its LR (the steps follow from the stages)."""
    decay = lr.decay_share if lr.decay_share is not None else lr.decay_steps
    return lr.kind, lr.max_lr, lr.min_lr, lr.warmup_steps, decay, lr.decay_shape


def _lr_schedule(lr: LRSchedule) -> str:
    """The LR schedule as a setting: wsd's decay a share of the baseline's steps as it was of the grown
    schedule's, or the same number of steps."""
    if lr.kind != "wsd":
        return f"lr_schedule {lr.kind}"
    decay = f"{lr.decay_share * 100:.10g}%" if lr.decay_share is not None else f"{lr.decay_steps} steps"
    return f"lr_schedule wsd decay {decay} {lr.decay_shape}"


def _differ(what: str, stage: Stage, final: Stage) -> BaselineError:
    return BaselineError(
        f"the stages after the last growth train with different {what} (lines {stage.line} and "
        f"{final.line}): one scratch run cannot mirror both; make them agree, or write the "
        f"baseline by hand"
    )


Data = list[tuple[str, float | None]]  # the data folders as the baseline file names them, and their weights


def schedule(plan: Plan, data: Data | None, grown: str, out: str | None) -> str:
    """The baseline schedule's text. `data`: the data folders as the baseline file must name them
    (relative to where it is written) with their weights (None: one folder); `grown` and `out`: the
    schedule's path and the baseline's, for its header."""
    final = check(plan)
    for path, _ in data or []:
        if '"' in path or "\n" in path:
            raise BaselineError(
                f"the data path {path!r} holds a quote or a line break, which a schedule's string "
                f"cannot: move or rename the data folder"
            )
    b = plan.totals.baseline
    assert b is not None  # check() passed: the schedule grows
    shape, t, lr = final.shape, final.training, final.lr
    this = out or "BASELINE.grow"
    lines = [
        f"# The from-scratch baseline of {grown} (growdsl baseline {grown}{f' -o {out}' if out else ''}): its",
        f"# final model trained from the first token on the same FLOPs, {b.flops:.4g} against {plan.totals.flops:.4g}",
        "# (the nearest whole step), with the final stage's settings. Run both, then compare them:",
        f"#   growdsl run {this} && growdsl run {grown}",
        f"#   growdsl compare runs/{_stem(this)}-TIME runs/{_stem(grown)}-TIME",
        f"model llama dim {shape.dim} layers {shape.n_layers} heads {shape.n_heads} kv_heads {shape.n_kv_heads} "
        f"ffn {shape.ffn_dim} vocab {shape.vocab_size} norm_eps {_num(shape.norm_eps)} "
        f"rope_theta {_num(shape.rope_theta)}"
        + (" tied" if shape.tied_embeddings else "")
        + (" padded" if shape.vocab_padded or plan.start else "")  # a model it started from: its own rows
        + _rope(shape.rope_scaling)
        + experts_setting(shape.experts),
        f"seq {t.seq_len}",
        f"batch {t.batch_seqs} seqs",
    ]
    o, p = t.optimizer, t.parallel
    optional = [  # (written when, the setting)
        (t.micro_batch, f"micro_batch {t.micro_batch}"),
        (True, f"lr {_num(lr.max_lr)} to {_num(lr.min_lr)}"),
        (True, f"warmup {lr.warmup_steps} steps"),
        (True, _lr_schedule(lr)),
        (True, f"betas {_num(o.betas[0])} {_num(o.betas[1])}"),
        (True, f"eps {_num(o.eps)}"),
        (True, f"weight_decay {_num(o.weight_decay)}"),
        (True, f"clip {_num(o.grad_clip)}"),
        (True, f"seed {t.seed}"),
        (data, "data " + " + ".join(f'"{path}"' + ("" if w is None else f" {_num(w)}") for path, w in data or [])),
        (p.dp_shard, f"dp_shard {p.dp_shard}"),
        (p.dp_replicate != 1, f"dp_replicate {p.dp_replicate}"),
        (p.tp != 1, f"tp {p.tp}"),
        (p.activation_checkpoint != "none", f"ac {p.activation_checkpoint}"),
        (p.compile, "compile on"),
        (p.mixed != "auto", f"mixed {p.mixed}"),
        (t.checkpoint_every_steps, f"checkpoint every {t.checkpoint_every_steps} steps"),
        (t.eval_every_steps, f"eval every {t.eval_every_steps} steps"),
        (t.eval_at_end, "eval at end"),
        (t.eval_tasks, f'eval tasks "{" ".join(t.eval_tasks)}"'),
        (t.val_every_steps, f"val every {t.val_every_steps} steps"),
        (t.val_every_steps, f"val tokens {t.val_tokens}"),
        (not t.val_every_steps, "val off"),
    ]
    lines += [setting for written, setting in optional if written]
    lines += ["", f"train {shape.n_layers}L for {b.steps} steps", ""]
    return "\n".join(lines)


def _rope(r: RopeScaling) -> str:
    """The model's RoPE scaling as the model statement says it (nothing for growdsl's default)."""
    if r == RopeScaling():
        return ""
    context = _num(r.original_max_position_embeddings)
    if r.kind == "none":
        return f" rope_scaling none {context}"
    if r.kind == "linear":
        return f" rope_scaling linear {_num(r.factor)} {context}"
    return f" rope_scaling llama3 {_num(r.factor)} {_num(r.low_freq_factor)} {_num(r.high_freq_factor)} {context}"


def experts_setting(e: Experts | None) -> str:
    """The model's mixture of experts as the model statement says it (nothing for a dense model)."""
    if e is None:
        return ""
    text = f" experts {e.count} top {e.top_k}" + (f" shared {e.shared}" if e.shared else "")
    text += f" every {e.every}" if e.every != 1 else ""
    text += f" balance {_num(e.balance)}" if e.balance else ""
    return text + (f" aux_loss {_num(e.aux_loss)}" if e.aux_loss else "")


def _stem(path: str) -> str:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name[: -len(".grow")] if name.endswith(".grow") else name


def _num(x: float) -> str:
    """A float as the schedule language reads it back exactly: 0.003, 1e-05, 10000."""
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else repr(x)


def planned(plan: Plan, data: Data | None, grown: str, out: str | None) -> tuple[str, Plan]:
    """The baseline's text and its plan, read back through the compiler: on the promised FLOPs."""
    from growdsl.lang.errors import ScheduleError
    from growdsl.plan import plan_source

    text = schedule(plan, data, grown, out)
    try:
        written = plan_source(text, out or "<baseline>")
    except ScheduleError as e:
        raise BaselineError(
            f"the baseline written for it does not read back ({e.errors[0].message}); "
            f"this is growdsl's bug: please report it with the schedule"
        ) from None
    assert plan.totals.baseline is not None
    if written.totals.flops != plan.totals.baseline.flops:
        raise BaselineError(
            "the baseline written for it reads back on other FLOPs; this is growdsl's bug: "
            "please report it with the schedule"
        )
    return text, written


def continued(plan: Plan) -> Baseline:
    """The dense model continued instead of upcycled: the schedule without its upcycling, its final stage
    as long as trains the same total FLOPs (the nearest whole step). Raises BaselineError where that is
    not one schedule: the upcycling must be the last growth, right before the final stage."""
    final = plan.stages[-1]
    if not any(isinstance(g, ExpertsGrowth) for s in plan.stages for g in s.growths):
        raise BaselineError("it upcycles nothing: the dense model continued is a baseline of an upcycling")
    if [type(g) for g in final.growths] != [ExpertsGrowth]:
        raise BaselineError(
            "its upcycling is not the one growth right before its final stage: write the dense run by hand"
        )
    if {"base", "new", "copies"} & set(final.training.freeze):
        raise BaselineError(
            f"its final stage freezes by origin ({' '.join(final.training.freeze)}, line {final.line}): parts of "
            f"the mixtures, which the dense model has not; write the dense run by hand"
        )
    if len(plan.stages) > 1:
        dense = plan.stages[-2].shape
    else:  # it upcycles the model it starts from
        assert plan.start is not None  # a first stage grows only a model the schedule starts from
        dense = plan.start.shape
    per_step = dense.flops_per_token(final.training.seq_len) * final.training.tokens_per_step
    steps = max(1, round(final.flops / per_step))
    before = final.cumulative_flops - final.flops  # the stages before, and any recorded cost of its start
    return Baseline(steps=steps, tokens=steps * final.training.tokens_per_step, flops=before + steps * per_step)


def continued_schedule(plan: Plan, source: str, schedule: Path, out: Path | None) -> str:
    """The text of the dense model continued (`continued`): the schedule as written, its upcycling left out
    and its last train statement's amount made the steps that reach the same FLOPs. After an upcycling
    with `lr restart`, the last stage sets its LR (`with lr MAX to MIN`, as it was), so its warmup and
    decay restart there too. Its AdamW state goes on whatever the upcycling's `optimizer` policy: only a
    growth resets it."""
    from growdsl.lang.parser import parse

    b = continued(plan)
    tree = parse(source, str(schedule))
    upcycle = next(s for s in tree.statements if isinstance(s, ast.Growth) and s.kind == "upcycle")
    train = [s for s in tree.statements if isinstance(s, ast.Train)][-1]
    if out is not None and out.resolve().parent != schedule.resolve().parent:
        settings = [s for st in tree.statements for s in (st.settings if isinstance(st, ast.Train) else (st,))]
        named = [a.value for s in settings if isinstance(s, ast.Setting) and s.key == "data" for a in s.args
                 if isinstance(a, ast.Str)]  # fmt: skip
        named += [s.source.value for s in tree.statements if isinstance(s, ast.Model) and s.source is not None]
        relative = [name for name in named if not Path(name).is_absolute()]
        if relative:
            raise BaselineError(
                f"it names {relative[0]!r} relative to its own folder: write the dense run beside it "
                f"(-o {schedule.resolve().parent / 'NAME.grow'}), where the same paths hold"
            )
    (u_start, u_end), (a_start, a_end) = upcycle.span.offsets(source), train.amount.span.offsets(source)
    end = train.span.offsets(source)[1]
    growth, final = plan.stages[-1].growths[0], plan.stages[-1]
    restart = ""
    if growth.lr == "restart" and len(plan.stages) > 1 and not any(s.key in ("lr", "min_lr") for s in train.settings):
        lr = f"lr {_num(final.lr.max_lr)} to {_num(final.lr.min_lr)}"
        restart = f", {lr}" if train.settings else f" with {lr}"
    body = source[:u_start] + source[u_end:a_start] + f"{b.steps} steps" + source[a_end:end] + restart + source[end:]
    header = [
        f"# The dense model of {schedule.name} continued instead of upcycled (growdsl baseline --dense): the",
        f"# upcycling on line {upcycle.span.line} left out, the last stage {b.steps} steps long, so that it trains "
        f"the same FLOPs,",
        f"# {b.flops:.4g} against {plan.totals.flops:.4g}."
        + (" Its LR restarts there, as the upcycled run's does." if restart else "")
        + " Run both, then compare them.",
    ]
    return "\n".join(header) + "\n" + body
