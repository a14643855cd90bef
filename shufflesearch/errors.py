"""The one exception type that reaches users as a message, not a traceback."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a malformed file, an impossible architecture, a missing run.

    The CLI prints ``error: <message>`` on one line and exits with code 2.
    """
