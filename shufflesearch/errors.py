"""The one exception type that reaches users as a message, not a traceback, and the one
warning category for spellings on their way out.

A stage says what was wrong in its own terms: the argument or setting (``field``), the value
it was given (``value``) and the rule it broke (``rule``), on one line. It never names a
command-line flag: a front end that knows which of its options set ``field`` names that option
instead (``named``), building its line from the same parts rather than editing the message.
A remedy that is a whole command (``shufflesearch show --list``) may be quoted: it is something
to run, not the option the caller typed.
"""

from __future__ import annotations

import re
from typing import Any

_NO_VALUE: Any = object()


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


class UserError(ValueError):
    """Bad input from the user: a malformed file, an impossible architecture, a missing run.

    ``UserError(rule)`` is a message alone (it names its own place, e.g. a file and line).
    ``UserError(rule, field="epochs")`` reads ``epochs: <rule>``; with ``value=`` it reads
    ``<field> <value>: <rule>`` (``trial 999: no such trial``), so the rule need not repeat the
    value. ``owner`` is the type or function the field belongs to (``DataSpec``), part of the
    name (``DataSpec.name``); ``where`` replaces that name in the message where another one
    reads better (``proxy task``), keeping ``field`` for a front end's lookup.

    The CLI prints ``error: <message>`` on one line and exits with code 2.
    """

    def __init__(self, rule: str, *, field: str = "", value: Any = _NO_VALUE, owner: str = "",
                 where: str | None = None) -> None:
        self.rule, self.field, self.owner = rule, field, owner
        self.value = None if value is _NO_VALUE else value
        self._has_value = value is not _NO_VALUE
        name = self.setting if where is None else where
        super().__init__(self.named(name) if name else rule)

    @property
    def setting(self) -> str:
        """The field's full name without any index inside it: ``DataSpec.name``, ``rungs``."""
        head = re.match(r"\w*", self.field).group()  # type: ignore[union-attr]
        return ".".join(x for x in (self.owner, head) if x)

    def named(self, name: str) -> str:
        """The message with the field called ``name`` (an index inside the field is kept)."""
        head = re.match(r"\w*", self.field).group()  # type: ignore[union-attr]
        inside = self.field[len(head):]
        value = f" {_shown(self.value)}" if self._has_value else ""
        return f"{name}{inside}{value}: {self.rule}"

    def __reduce__(self) -> tuple[Any, ...]:  # a worker process's error keeps its parts
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type[UserError], args: tuple[Any, ...], state: dict[str, Any]) -> UserError:
    e = cls.__new__(cls)
    ValueError.__init__(e, *args)
    e.__dict__.update(state)
    return e


def first_line(e: BaseException) -> str:
    """``Class: first line`` of an exception from another library, for the one-line error
    (or failure reason) that wraps it: their messages often run to a stack of lines."""
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0]}" if text else e.__class__.__name__


class Deprecated(FutureWarning):
    """An old spelling (a name, an argument) that still works for one release. FutureWarning,
    not DeprecationWarning, because the people who see it are users, not the code's authors;
    the CLI prints it as one ``note:`` line."""
