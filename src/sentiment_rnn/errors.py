"""Errors a user can act on: the CLI prints their message on one line, with no traceback."""


class UserError(Exception):
    """A mistake in input, configuration or environment that the user can fix."""
