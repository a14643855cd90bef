"""The command tree built from the command table: commands of one or more words (``latency
table build``), groups that also have a form of their own (``latency ARCH`` beside ``latency
table ...``), and old spellings that run the new command after a one-line note."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

OWN = "ARCH"  # the word under which a group keeps its own form (inserted, never typed)
BARE = "(bare)"  # the word under which a group keeps its bare call's old spelling


@dataclass(frozen=True)
class Command:
    help: str
    add: Callable[[argparse.ArgumentParser], None]  # its arguments
    run: Callable[[argparse.Namespace], int]


class _Group(argparse.ArgumentParser):
    """A command's parser. A group with a form of its own sends it every call whose first word
    names none of its sub-commands; with a bare form, a call without any word goes there."""

    words: frozenset[str] = frozenset()  # its sub-commands
    has_own = False
    has_bare = False
    takes_value: frozenset[str] = frozenset()  # its forms' options that take a value

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = list(args or [])
        if self.has_own and args[:1] not in (["-h"], ["--help"]):
            i = self._first_word(args)
            if i is None:
                args = [BARE if self.has_bare else OWN, *args]
            elif i > 0 or args[0] not in self.words:
                args = [OWN, *args]
        return super().parse_known_args(args, namespace)

    def _first_word(self, args: list[str]) -> int | None:
        """Where the first argument that is neither an option nor an option's value stands."""
        value_next = False
        for i, a in enumerate(args):
            if value_next:
                value_next = False
            elif a.startswith("-") and a != "-":
                value_next = a in self.takes_value
            else:
                return i
        return None


class Tree:
    """Builds the parsers of the command table under ``root``."""

    def __init__(self, root: argparse.ArgumentParser, groups: dict[str, str]) -> None:
        self.root, self.groups = root, groups  # groups: the help of each pure group
        self.nodes: dict[str, argparse.ArgumentParser] = {"": root}
        self.subs: dict[str, Any] = {}

    def _child(self, parent: str, word: str, help_: str | None, **kw: Any) -> argparse.ArgumentParser:
        if parent not in self.subs:
            top = not parent
            self.subs[parent] = self.nodes[parent].add_subparsers(
                dest="command" if top else "_" + parent.replace(" ", "_"), metavar="COMMAND",
                parser_class=_Group, required=not top)
        p = self.subs[parent].add_parser(word, **({"help": help_} if help_ else {}), **kw)
        if parent:
            g = self.nodes[parent]
            g.words = g.words | {word}  # type: ignore[attr-defined]
        return p

    def node(self, path: str, help_: str) -> argparse.ArgumentParser:
        """The parser of ``path`` (made on first use, its parent groups too)."""
        if path not in self.nodes:
            parent, _, word = path.rpartition(" ")
            if parent:
                self.node(parent, self.groups.get(parent, ""))
            self.nodes[path] = self._child(parent, word, help_, description=help_)
        return self.nodes[path]

    def command(self, path: str, c: Command, *, hidden_word: str | None = None,
                note: str | None = None, help_: str | None = None) -> None:
        """``c`` at ``path``; with ``hidden_word``, as that form of the group ``path``."""
        if hidden_word is None:
            p = self.node(path, help_ or c.help)
            c.add(p)
        else:
            g = self.nodes[path]
            p = self._child(path, hidden_word, None, prog=f"{self.root.prog} {path}", description=c.help)
            c.add(p)
            g.has_own |= hidden_word == OWN  # type: ignore[attr-defined]
            g.has_bare |= hidden_word == BARE  # type: ignore[attr-defined]
            g.takes_value = g.takes_value | {  # type: ignore[attr-defined]
                s for a in p._actions if a.option_strings and a.nargs != 0 for s in a.option_strings}
            g.usage = f"{self.root.prog} {path} {OWN} [options] | {path} COMMAND ..."
        flags = frozenset(s for a in p._actions for s in a.option_strings)
        p.set_defaults(_run=c.run, _flags=flags, _note=note)

    def old(self, old: str, new: str, c: Command, extra: Callable[[argparse.ArgumentParser], None] | None) -> None:
        """The old spelling ``old`` of the command ``new``: it runs ``c`` after a note."""
        def add(p: argparse.ArgumentParser) -> None:
            c.add(p)
            if extra:
                extra(p)

        self.command(old, Command(c.help, add, c.run), note=self._note(f"`{self.root.prog} {old}`", new),
                     help_=f"old spelling of `{new}` (goes in the next release)")

    def bare(self, group: str, new: str, c: Command) -> None:
        """``group`` called without a word: the old spelling of ``new``."""
        self.command(group, c, hidden_word=BARE,
                     note=self._note(f"`{self.root.prog} {group}` without an architecture", new))

    def _note(self, old: str, new: str) -> str:
        return (f"{old} is now `{self.root.prog} {new}`; the old spelling works in this release "
                "and goes in the next")
