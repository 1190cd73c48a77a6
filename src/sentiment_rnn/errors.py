"""Errors a user can act on: the CLI prints their message on one line, with no traceback."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A mistake in input, configuration or environment that the user can fix."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a UserError into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except UserError as exc:
        # Bytes that were not UTF-8 (escaped as lone surrogates) shown as \udcxx, not a crash.
        message = f"error: {exc}".encode("utf-8", "backslashreplace").decode("utf-8")
        print(" ".join(message.splitlines()), file=sys.stderr)
        sys.exit(2)
