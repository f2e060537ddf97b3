"""Errors of the stages (kept apart from the runner, so stage keys don't hash the runner)."""


class StageError(RuntimeError):
    """A stage could not produce a trustworthy artifact (the message says why and what to
    change)."""
