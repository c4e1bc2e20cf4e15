"""The error a growdsl command ends with: one line for the user, and the exit status it means.

Every problem a user can act on is a GrowdslError: its message says what is wrong and what to do,
its class says the exit status, and `growdsl.cli.main` prints it once. Exit 1: the input is invalid
or the work failed (a schedule, data, a run); exit 2: the command line names something that cannot
be used (a folder, a file, a checkpoint to evaluate)."""

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class GrowdslError(Exception):
    exit_code = EXIT_INVALID

    def said_by(self, command: str) -> str:
        """What `growdsl COMMAND` prints for it."""
        return f"growdsl {command}: {self}"


class UsageError(GrowdslError):
    exit_code = EXIT_USAGE


class RunError(GrowdslError):
    """A run cannot go on (or cannot start); the message says why and what to do."""


class Diverged(RunError):
    """The run's loss, gradients or weights stopped being finite: trained on from its last checkpoint
    with the same seed and data, it would diverge again."""
