"""What a page cannot show, said as one line: the view turns these into a page with a status
code (404: something the URL names is missing; 422: a value out of bounds, or a file of the run
that cannot be read), never a traceback."""

from __future__ import annotations


class ViewError(Exception):
    """A page that cannot be shown: ``title`` heads it, ``detail`` says what is missing or
    wrong, ``hint`` what to do about it."""

    status = 400

    def __init__(self, title: str, detail: str, hint: str | None = None):
        super().__init__(f"{title}: {detail}")
        self.title, self.detail, self.hint = title, detail, hint


class Missing(ViewError):
    """A run, site, example or feature the URL names does not exist (404)."""

    status = 404


class OutOfBounds(ViewError):
    """A query value outside what the page accepts (422); ``detail`` names the limit."""

    status = 422


class Unreadable(ViewError):
    """A file of the run cannot be read: corrupt, truncated or removed (422)."""

    status = 422


def first_line(error: BaseException, limit: int = 240) -> str:
    """The first line of an error's message, shortened: enough to name the problem."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"
