"""The plan as a person reads it: a per-stage table, each growth on its own line, then totals."""

from __future__ import annotations

from growdsl.plan import baseline, guideline
from growdsl.plan.layermap import compact
from growdsl.plan.plan import DepthGrowth, ExpertsGrowth, Plan, Stage
from growdsl.plan.units import human

_GUARANTEE = {
    "exact": "function-preserving",
    "approximate": "function-preserving up to RMSNorm",
    "none": "not function-preserving",
}


HEADER = ("stage", "layers", "params", "tokens", "steps", "batch", "lr", "FLOPs", "cum. FLOPs")
RIGHT = (0, 1, 2, 3, 4, 7, 8)  # the columns of numbers


def render_plan(plan: Plan, predict_d: bool = False) -> str:
    """The plan: a line that says what it grows, the table of its stages, then its totals."""
    first = plan.start.shape if plan.start else plan.stages[0].shape
    n = len(plan.stages)
    title = f"{plan.source}: {n} stage{'s' if n != 1 else ''}, {first.describe()} -> {plan.stages[-1].shape.describe()}"
    return "\n".join([title, "", *_table(plan, predict_d), "", *_totals(plan, predict_d)])


def _table(plan: Plan, predict_d: bool) -> list[str]:
    """A row per stage (and one for a model it starts from), each growth and note above its stage."""
    rows: list[tuple[str, ...]] = []
    notes: list[list[str]] = []
    if plan.start:  # the model stage 0 starts from, as a row of its own
        st = plan.start
        cost = (
            f"trained on {human(st.tokens)} tokens, {'as recorded' if st.recorded else 'as stated'}"
            if st.flops or st.recorded
            else "its cost not stated: 0 FLOPs"
        )
        what = (
            "a growdsl checkpoint"
            if st.kind == "run"
            else "a Hugging Face Mixtral"
            if st.shape.experts
            else "a Hugging Face Llama"
        )
        rows.append(
            ("from", str(st.shape.n_layers), human(st.shape.params), human(st.tokens), "-", "-", "-", f"{st.flops:.3g}",
             f"{st.flops:.3g}")
        )  # fmt: skip
        notes.append([f"  {st.name}: {what} ({st.shape.describe()}); {cost}"])
    for s in plan.stages:
        rows.append(_stage_row(s))
        notes.append(["^ " + growth_line(g) for g in s.growths])
        if s.frozen:
            notes[-1].append("  " + _frozen_line(s))
        if predict_d and s.timing:
            notes[-1].append(_timing_line(s))
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(cells) -> str:
        return "  ".join(
            c.rjust(w) if i in RIGHT else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(HEADER)]
    for row, above in zip(rows, notes):
        out += ["      " + note for note in above] + [line(row)]
    return out


def _stage_row(s: Stage) -> tuple[str, ...]:
    training = s.training
    lr = f"{_sci(s.lr.max_lr)}->{_sci(s.lr.min_lr)} {s.lr.kind}"
    if s.lr.kind == "wsd":
        decay = s.lr.total_steps - s.lr.decay_start  # as it runs: never into the warmup
        lr += f" (decay {decay:,}{'' if s.lr.decay_shape == 'linear' else ' ' + s.lr.decay_shape})"
    if s.lr.start_step:
        lr += f" (from step {s.lr.start_step:,})"
    elif s.lr.warmup_steps:
        lr += f", warmup {s.lr.warmup_steps:,}"
    return (
        str(s.index),
        str(s.shape.n_layers),
        human(s.params),
        human(s.tokens) + (" (auto)" if s.auto else ""),
        f"{s.steps:,}",
        f"{training.batch_seqs}x{training.seq_len}",
        lr,
        f"{s.flops:.3g}",
        f"{s.cumulative_flops:.3g}",
    )


def _totals(plan: Plan, predict_d: bool) -> list[str]:
    """Tokens and FLOPs, the from-scratch baseline (or why there is none), validation's cost."""
    tot = plan.totals
    out = [f"total tokens   {human(tot.tokens)}", f"total FLOPs    {tot.flops:.3e}"]
    final = plan.stages[-1].shape
    if final.experts is not None:  # a token passes through part of it: what its FLOPs come from
        e = final.experts
        out.append(
            f"experts        {human(final.active_params)} of the {human(final.params)} parameters a token "
            f"({e.top_k}{f' + {e.shared} shared' if e.shared else ''} of {e.count} experts, and the router): "
            f"its FLOPs are the active parameters'"
        )
    try:
        baseline.check(plan)
        b = tot.baseline
        assert b is not None  # check() passed: the schedule grows
        what = f"{final.n_layers}L" + (" with its experts" if final.experts else "")
        out.append(
            f"baseline       {what} from scratch, {b.steps:,} steps ({human(b.tokens)} "
            f"tokens), the same FLOPs ({b.flops:.3e}): `growdsl baseline` writes it; run both, then `growdsl compare`"
        )
        stacked = any(isinstance(g, DepthGrowth) for s in plan.stages for g in s.growths)
        if stacked and (plan.start is None or plan.start.recorded):  # the paper grows bases trained in the same run
            out.append(f"the paper      {PAPER_RESULT}")
    except baseline.BaselineError as e:
        out.append(f"baseline       none: {e}")
    if any(isinstance(g, ExpertsGrowth) for s in plan.stages for g in s.growths):
        try:
            c = baseline.continued(plan)
            out.append(
                f"dense          the dense model continued instead, {c.steps:,} steps in its last stage, the same "
                f"FLOPs ({c.flops:.3e}): `growdsl baseline --dense` writes it"
            )
        except baseline.BaselineError as e:
            out.append(f"dense          none: {e}")
    validating = [s for s in plan.stages if s.training.val_every_steps]
    if validating:
        training = validating[-1].training
        which = (
            "" if len(validating) == len(plan.stages) else f" in stages {', '.join(str(s.index) for s in validating)}"
        )
        sequences = training.val_tokens // training.seq_len
        out.append(
            f"validation     every {training.val_every_steps:,} steps and at stage ends{which}, on "
            f"{sequences * training.seq_len:,} held-out tokens ({sequences} sequences): "
            f"{tot.val_flops:.3g} FLOPs ({_share(tot.val_flops / tot.flops)} of training), counted apart"
        )
    else:
        out.append("validation     off")
    if predict_d:
        out.append(
            f"guideline      log10(d) = 0.88 log10(N) + 163.27/log10(C) - 5.74, C = 6ND; g = "
            f"{guideline.G_RECOMMENDED} (2-4 works)"
        )
    return out


# What the paper measured at equal compute, in its own terms (speedup = FLOPs_scratch / FLOPs_grown - 1).
PAPER_RESULT = (
    "at equal FLOPs G_stack 7B reached scratch's 300B-token loss with 194B tokens (+54.6%); 3B +54.5%, 410M +31.0%"
)


def growth_line(g) -> str:
    """One growth, its map (compact, 0-based), R_c, guarantee and policies, on one line."""
    policies = f"optimizer {g.optimizer}, lr {g.lr}"
    knobs = ""
    if g.ramp_steps:
        knobs = f", ramp {g.ramp_steps:,} steps"
    if g.learn:
        knobs = f", learned map {g.learn.steps} steps at lr {_sci(g.learn.lr)}"
    knobs += "".join(f", {name} {value:g}" for name, value in g.options.items())
    if isinstance(g, DepthGrowth):
        name = {"stack": "stack", "interpolate": "interpolate", "pattern": "partial stack"}[g.method]
        if g.placement:
            name = f"stack {g.placement} ="
        rc = g.connection_rate
        return (
            f'line {g.line}: {name} "{g.pattern}" ({g.operator}{knobs}): {g.source_layers} -> '
            f"{g.target_layers} layers, map {compact(g.sources)}, R_c {rc.numerator}/{rc.denominator} "
            f"({float(rc):.1%}); {_GUARANTEE[g.guarantee]}; {policies}"
        )
    if isinstance(g, ExpertsGrowth):
        e = g.experts
        where = "every feed-forward" if e.every == 1 else f"every {e.every}th block's feed-forward"
        extra = (f" + {e.shared} shared" if e.shared else "") + (f", balance {_sci(e.balance)}" if e.balance else "")
        extra += f", aux_loss {_sci(e.aux_loss)}" if e.aux_loss else ""
        return (
            f"line {g.line}: upcycle ({g.operator}{knobs}): {where} -> {e.count} experts, top {e.top_k}{extra}; "
            f"{_GUARANTEE[g.guarantee]}; {policies}"
        )
    src, dst = g.source, g.target
    return (
        f"line {g.line}: widen ({g.operator}{knobs}): dim {src.dim}->{dst.dim}, heads {src.n_heads}->"
        f"{dst.n_heads}, kv {src.n_kv_heads}->{dst.n_kv_heads}, ffn {src.ffn_dim}->{dst.ffn_dim}; "
        f"{_GUARANTEE[g.guarantee]}; {policies}"
    )


def _frozen_line(s: Stage) -> str:
    f = s.frozen
    parts = [f"layers {compact(list(f.layers))}" if f.layers else ""]
    by_part = (("all but the mixtures", f.dense), ("the mixtures", f.mixtures), ("the routed experts", f.experts))
    parts += [f"{what} of layers {compact(list(blocks))}" if blocks else "" for what, blocks in by_part]
    parts += ["the embeddings" if f.embeddings else "", "the head" if f.head else ""]
    trained = s.trainable_params if s.trainable_params is not None else s.params
    return (
        f"freeze {' '.join(s.training.freeze)}: {', '.join(p for p in parts if p)} frozen; trains {human(trained)} of "
        f"{human(s.params)} parameters, {s.flops_per_token / s.shape.flops_per_token(s.training.seq_len):.0%} of "
        f"the FLOPs a token of training them all costs"
    )


def _timing_line(s: Stage) -> str:
    t = s.timing
    assert t is not None  # only stages after a growth are timed
    g = ""
    if t.factor is not None:
        flag = "" if guideline.g_in_range(t.factor) else " (outside 2-4!)"
        g = f", g = {float(t.factor):g}{flag}"
    fitted = guideline.FITTED[0] <= t.target_params <= guideline.FITTED[1]
    outside = "" if fitted else " (N is outside the 410M-7B the fit was made on)"
    return (
        f"^ guideline: N = {human(t.target_params)} params, D = {human(t.target_tokens)} tokens, "
        f"C = {t.compute:.3g} -> d = {_tokens(t.predicted_d)} tokens{outside}; schedule: {_tokens(t.used_d)}{g}"
    )


def _tokens(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else human(n)


def render_prediction(p: guideline.Prediction) -> str:
    return "\n".join(
        [
            f"target parameters N   {human(p.params)}",
            f"target tokens D       {human(p.tokens)}",
            f"compute C = 6ND       {p.compute:.3e} FLOPs",
            f"growth timing d       {p.d / 1e9:.2f}B tokens",
            f"growth factor g       {guideline.G_RECOMMENDED} (the paper's choice; 2-4 works)",
        ]
    )


def _share(x: float) -> str:
    return "<0.1%" if x < 0.001 else f"{x:.1%}"


def _sci(x: float) -> str:
    """3e-4 rather than 0.0003 or 3.000e-04."""
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
