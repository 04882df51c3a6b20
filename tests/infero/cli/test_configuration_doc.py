"""docs/configuration.md lists every setting of `infero server` and `infero llm` exactly as
their real `--help` shows it: flags, env var, default and meaning.

The expectations come from running the commands (not from the settings models the help is
built from), so a help text that shows `15.0` where the doc says `15s` fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
SECTIONS = {"llm": "## `infero llm`", "server": "## `infero server`"}


@dataclass(frozen=True)
class Option:
    flags: frozenset[str]
    default: str
    meaning: str


def help_options(command: str) -> dict[str, Option]:
    """Env var -> option, parsed from `infero <command> --help` run as a process."""
    done = subprocess.run(
        [sys.executable, "-c", "from infero.cli import main; main()", command, "--help"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"},
    )
    entries: list[tuple[str, str]] = []
    for line in done.stdout.splitlines():
        if line.startswith("  -"):
            names, _, text = line.strip().partition("  ")
            entries.append((names, text.strip()))
        elif entries and line.startswith("        "):
            names, text = entries[-1]
            entries[-1] = (names, f"{text} {line.strip()}".strip())
    options: dict[str, Option] = {}
    for names, text in entries:
        found = re.fullmatch(r"(.*) \[env: ([A-Z_]+)\] \[default: (.*)\]", text)
        if found is None or found.group(2) == "CONFIG_FILE":
            continue
        flags = frozenset(
            n for n in re.split(r"[ ,/]+", names) if n.startswith("-") and not n.startswith("--no-")
        )
        options[found.group(2)] = Option(flags, found.group(3), found.group(1))
    return options


def doc_rows(command: str) -> dict[str, Option]:
    """Env var -> row of the command's table in docs/configuration.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(SECTIONS[command]) :]
    section = section[: section.find("\n## ", 1)]
    rows: dict[str, Option] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`"):
            continue
        env, flags, _, default, meaning = cells
        rows[env.strip("`")] = Option(
            frozenset(f.strip() for f in flags.strip("`").split(",")),
            default.strip("`"),
            meaning.removesuffix(" (secret)"),
        )
    return rows


@pytest.mark.parametrize("command", ["llm", "server"])
def test_the_configuration_doc_matches_the_real_help(command: str) -> None:
    shown = help_options(command)
    documented = doc_rows(command)
    assert len(shown) > 10
    assert sorted(shown) == sorted(documented), "settings missing from or stale in the doc"
    wrong = {env: (documented[env], shown[env]) for env in shown if documented[env] != shown[env]}
    assert not wrong, "docs/configuration.md (doc, --help) differ:\n" + "\n".join(
        f"{env}: {doc} != {real}" for env, (doc, real) in wrong.items()
    )


@pytest.mark.parametrize("command", ["llm", "server"])
def test_durations_show_in_human_form_in_help(command: str) -> None:
    defaults = {env: option.default for env, option in help_options(command).items()}
    durations = [env for env in defaults if re.search(r"TIMEOUT|INTERVAL|AFTER|RETENTION", env)]
    assert durations
    for env in durations:
        assert re.fullmatch(r"-1|\d+(\.\d+)?(s|m|h)", defaults[env]), (env, defaults[env])
