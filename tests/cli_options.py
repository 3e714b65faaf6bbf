"""Walking the `observer` command's options, for tests that check them all."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from observer import cli


def commands(parser: argparse.ArgumentParser | None = None, path: str = ""
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command: ("", the top), ("run", its parser), ("lab apiserver", ...)."""
    parser = parser or cli.build_parser()
    yield path, parser
    for action in actions(parser):
        # argparse's own class for subcommands (see actions).
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                yield from commands(sub, f"{path} {name}".strip())


def actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's options. argparse has no public way to list them; its ``_actions`` has been
    the one everybody uses, unchanged since Python 3.2."""
    return list(parser._actions)  # noqa: SLF001
