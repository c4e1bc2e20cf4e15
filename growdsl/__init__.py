"""growdsl: write a whole train -> grow -> train schedule as one spec, plan it, run it."""

__version__ = "0.1.0"
