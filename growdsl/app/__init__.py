"""The application: what each command does, as plain functions with typed arguments, between the
command line (growdsl.cli: arguments in, lines out) and the library floors below. Each function
raises a growdsl.errors.GrowdslError for what the user can act on; the CLI prints it once."""
