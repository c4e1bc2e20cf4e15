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
    from tokenizers import Tokenizer  # lm-eval and the rest only for runs that evaluate

    from growdsl.eval import benchmarks
    from growdsl.eval.evaluate import default_tasks, run_tasks, summary, write_results
    from growdsl.eval.lm import GrowLM
    from growdsl.runtime.data import EOT

    heldout = data_dir / "val.jsonl"
    chosen = {s.index: list(s.training.eval_tasks) or default_tasks(heldout) for s in stages}
    if any("heldout" in tasks for tasks in chosen.values()) and not heldout.exists():
        raise RunError(
            f"eval task heldout: {data_dir} has no val.jsonl; prepare the data again "
            f"(growdsl data prepare) or leave heldout out"
        )
    if world.main:
        try:
            benchmarks.ensure(sorted({t for tasks in chosen.values() for t in tasks}))
        except benchmarks.BenchmarkError as e:
            raise RunError(str(e)) from None
    world.barrier()
    tokenizer = Tokenizer.from_file(str(data_dir / "tokenizer.json"))

    def evaluate(model, stage, about):
        lm = GrowLM(
            model,
            tokenizer,
            tokenizer.token_to_id(EOT),
            stage.training.seq_len,
            device=world.device,
            mixed=world.device.type == "cuda",
        )
        results = run_tasks(lm, chosen[stage.index], heldout)
        if world.main:
            write_results(run_dir, f"stage{about['stage']}-step{about['step']}", results, about)
            log(f"eval stage {about['stage']} step {about['step']}: {summary(results)}")
        return results

    return evaluate
