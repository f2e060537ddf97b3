"""Errors a stage or the library raises for the user (kept apart from the runner, so stage keys
do not hash it)."""


class StageError(RuntimeError):
    """A stage could not produce a trustworthy artifact (the message says why and what to
    change)."""


class FeatureError(StageError):
    """A user's feature function failed on the samples (it raised, returned the wrong number of
    labels, or values that are no labels). The user's to fix: the message is one line naming the
    feature and the first bad value; the traceback goes to the log."""
