"""Every dataplane mode is known everywhere a mode must be: a mode missing from one place (the
CLI, the lab, the chart, the docs, the metric's label values) fails here, naming the place."""

from __future__ import annotations

import re

import pytest

from observer.cli import build_parser
from observer.dataplane import modes
from observer.lab.config import MODES as LAB_MODES
from observer.lab.config import NOT_IN_THE_LAB
from tests.cli_options import actions, commands
from tests.conftest import REPO

NAMES = set(modes.NAMES)


def choices(command: str, flag: str) -> set[str]:
    parser = dict(commands())[command]
    (action,) = [a for a in actions(parser) if flag in a.option_strings]
    assert action.choices is not None
    return set(action.choices)


def test_names_are_unique_and_each_module_names_its_own() -> None:
    assert len(modes.NAMES) == len(NAMES)
    for mode in modes.MODES:
        assert modes.named(mode.name) is mode
        assert mode.about


def test_the_cli_offers_every_mode_and_every_modes_options() -> None:
    assert choices("run", "--dataplane") == {"auto", "none", *NAMES}
    assert choices("dataplane", "--mode") == {"auto", *NAMES}
    for command in ("run", "dataplane"):
        flags = {f for a in actions(dict(commands())[command]) for f in a.option_strings}
        assert {option.flag for option in modes.OPTIONS} <= flags, command
    help_text = build_parser().format_help()
    assert help_text  # the parser builds with every mode's flags


def test_the_lab_runs_every_mode_or_says_why_not() -> None:
    in_the_lab = {mode for mode, _ in LAB_MODES.values()}
    assert in_the_lab | set(NOT_IN_THE_LAB) == NAMES
    assert not in_the_lab & set(NOT_IN_THE_LAB)
    assert choices("lab", "--dataplane") == {*LAB_MODES, "memory"}


@pytest.mark.parametrize("where", [
    "docs/dataplane.md", "docs/metrics.md", "deploy/helm/observer/values.yaml", "README.md",
])
def test_the_docs_and_the_chart_name_every_mode(where: str) -> None:
    text = (REPO / where).read_text()
    missing = sorted(name for name in NAMES if not re.search(rf"`{name}`|\b{name}\b", text))
    assert missing == [], f"{where} does not name {missing}"


def test_the_metrics_doc_lists_every_mode_as_a_proxy_mode() -> None:
    line = next(line for line in (REPO / "docs" / "metrics.md").read_text().splitlines()
                if line.startswith("| `endpoint_propagation_duration_seconds`"))
    listed = set(re.findall(r"`(\w+)`", line.split("`proxy_mode` (")[1].split(")")[0]))
    assert listed == {*NAMES, "none"}


def test_each_modes_options_have_a_chart_value() -> None:
    values = (REPO / "deploy" / "helm" / "observer" / "values.yaml").read_text()
    for option in modes.OPTIONS:
        assert f"# {option.flag}:" in values, option.flag
