"""The evaluation a schedule asks for while it trains (`eval every`, `eval at growth`, `eval at end`):
the benchmarks fetched before training starts, then each evaluation point scored on the live model
and written to the run directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from growdsl.plan.plan import Plan
from growdsl.runtime.distributed import World
from growdsl.runtime.trainer import RunError


def in_run_evaluator(plan: Plan, data_dir: Path, run_dir: Path, world: World, log: Callable[[str], None]):
    """The schedule's in-run evaluation, or None when it evaluates nowhere. The benchmarks are
    fetched (once, by rank 0) before training starts, so a fetch problem stops nothing midway."""
    stages = [
        s for s in plan.stages if s.training.eval_every_steps or s.training.eval_at_growth or s.training.eval_at_end
    ]
    if not stages:
        return None
    from growdsl.eval import benchmarks
    from growdsl.eval.evaluate import default_tasks, run_tasks, summary, write_results
    from growdsl.eval.lm import GrowLM
    from growdsl.runtime.tokenizer import TokenizerError, read_prepared

    heldout = data_dir / "val.jsonl"
    chosen = {s.index: list(s.training.eval_tasks) or default_tasks(heldout) for s in stages}
    if any("heldout" in tasks for tasks in chosen.values()) and not heldout.exists():
        raise RunError(
            f"eval task heldout: {data_dir} has no val.jsonl; prepare the data again "
            f"(growdsl data prepare) or leave heldout out"
        )
    problem = None
    if world.main:  # fetched once; the other ranks wait for it and stop with it if it fails
        try:
            benchmarks.ensure(sorted({t for tasks in chosen.values() for t in tasks}))
        except benchmarks.BenchmarkError as e:
            problem = str(e)
    problem = world.first_failure(problem)
    if problem:
        raise RunError(problem)
    try:
        tokenizer, specials = read_prepared(data_dir)
    except TokenizerError as e:
        raise RunError(str(e)) from None

    def evaluate(model, stage, about):
        lm = GrowLM(
            model,
            tokenizer,
            tokenizer.token_to_id(specials.eos),
            stage.training.seq_len,
            bos_id=None if specials.bos is None else tokenizer.token_to_id(specials.bos),
            device=world.device,
            mixed=world.device.type == "cuda",
        )
        results = run_tasks(lm, chosen[stage.index], heldout)
        if world.main:
            write_results(run_dir, f"stage{about['stage']}-step{about['step']}", results, about)
            log(f"eval stage {about['stage']} step {about['step']}: {summary(results)}")
        return results

    return evaluate
