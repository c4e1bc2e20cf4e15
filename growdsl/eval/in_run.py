"""The evaluation a schedule asks for while it trains (`eval every`, `eval at growth`, `eval at end`):
the benchmarks fetched before training starts, then each evaluation point scored on the live model
and written to the run directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from growdsl.plan.plan import Plan, Stage
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
    from growdsl.data.tokenizer import TokenizerError, read_prepared
    from growdsl.eval import benchmarks
    from growdsl.eval.evaluate import default_tasks

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

    return InRunEvaluator(run_dir, world, log, chosen, heldout, tokenizer, specials)


class InRunEvaluator:
    """Scores the live model at an evaluation point and writes RUN/eval/stageS-stepN.json; knows
    whether a point's scores were written (a run stopped after a checkpoint and before its
    evaluation owes it, and a resume scores it)."""

    def __init__(self, run_dir: Path, world: World, log, chosen: dict, heldout: Path, tokenizer, specials):
        self.run_dir, self.world, self.log = run_dir, world, log
        self.chosen, self.heldout, self.tokenizer, self.specials = chosen, heldout, tokenizer, specials

    def __call__(self, model, stage: Stage, about: dict) -> dict:
        from growdsl.eval.evaluate import run_tasks, summary, write_results
        from growdsl.eval.lm import GrowLM

        eos, bos = self.specials.eos, self.specials.bos
        lm = GrowLM(
            model,
            self.tokenizer,
            self.tokenizer.token_to_id(eos),
            stage.training.seq_len,
            bos_id=None if bos is None else self.tokenizer.token_to_id(bos),
            device=self.world.device,
            mixed=self.world.device.type == "cuda",
        )
        results = run_tasks(lm, self.chosen[stage.index], self.heldout)
        if self.world.main:
            write_results(self.run_dir, _label(stage.index, about["step"]), results, about)
            self.log(f"eval stage {about['stage']} step {about['step']}: {summary(results)}")
        return results

    def written(self, stage: Stage, step: int) -> bool:
        from growdsl.eval.evaluate import read_results

        scored = read_results(self.run_dir, _label(stage.index, step)) if self.world.main else None
        return self.world.share(scored is not None and set(self.chosen[stage.index]) <= set(scored))


def _label(stage: int, step: int) -> str:
    return f"stage{stage}-step{step}"
