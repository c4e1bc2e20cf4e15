"""The evaluation tasks growdsl ships (defined in growdsl/eval/tasks): named here, on the plan's
floor, so that a schedule naming one that does not exist is an error at its line, before a run."""

EVAL_TASKS = {
    "lambada_openai": "LAMBADA (OpenAI), last-word accuracy and perplexity, 5153 passages",
    "arc_easy": "ARC-Easy, test, 2376 questions",
    "arc_challenge": "ARC-Challenge, test, 1172 questions",
    "piqa": "PIQA, validation, 1838 questions",
    "sciq": "SciQ, validation, 1000 questions",
    "winogrande": "Winogrande xl, validation, 1267 questions",
    "heldout": "perplexity on the held-out documents of the run's own corpus",
}
