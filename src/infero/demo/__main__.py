"""`python -m infero.demo` is `infero demo`."""

from __future__ import annotations

import sys

from infero.cli import app

app(args=["demo", *sys.argv[1:]], prog_name="infero demo")
