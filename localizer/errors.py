"""The one exception type for mistakes in the user's input.

Everything raised as :class:`LocalizerError` is a problem the user can fix (a bad path, a layer pattern that matches
nothing, stimuli without a ``positive`` column, ...). The CLI prints its message on one line and exits with code 2;
any other exception is a bug and keeps its traceback.
"""


class LocalizerError(ValueError):
    """A user-facing input error; the message says what was wrong and how to fix it."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can be pages long)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
