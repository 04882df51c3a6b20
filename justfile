# infero task runner. Every recipe uses the project's virtualenv (.venv).
set shell := ["bash", "-euo", "pipefail", "-c"]
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

# list recipes
default:
    @just --list

# create .venv and install infero with every test and lint tool
sync:
    test -x .venv/bin/python || python3 -m venv .venv
    .venv/bin/pip install -q -e '.[test]'

# format the code
fmt:
    ruff format .
    ruff check --fix .

# lint: ruff (rules + format check) and mypy strict
lint:
    ruff check .
    ruff format --check .
    mypy

# run the tests (extra args go to pytest)
test *args:
    pytest {{args}}

# everything CI runs, in CI's order
check: lint test

# regenerate the console's snapshot SVGs after inspecting snapshot_report.html
snap-update:
    pytest tests/infero_tui --snapshot-update

# benchmark: the relay against the backend called directly (--quick for a short run)
bench *args:
    python -m bench {{args}}

# run the server on its embedded defaults (extra args go to `infero server`)
serve *args:
    infero server {{args}}

# the console replaying a recorded fleet (no server needed)
console-dev:
    infero tui --replay tests/data/fleet_series.json

# server + connector + demo backend on loopback
demo:
    infero demo
