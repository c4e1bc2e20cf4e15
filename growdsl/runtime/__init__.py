"""Running a plan on torchtitan: data, the trainer, growth inside the run, checkpoints."""
