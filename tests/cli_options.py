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
        if isinstance(action.choices, dict):  # the subcommands, by name
            for name, sub in action.choices.items():
                yield from commands(sub, f"{path} {name}".strip())


def actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's options, as ``cli.Parser`` keeps them."""
    assert isinstance(parser, cli.Parser), "every parser of the command is a cli.Parser"
    return list(parser.options)
