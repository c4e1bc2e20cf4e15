"""The schedule language: grammar, parser, AST and diagnostics. Never imports torch."""
