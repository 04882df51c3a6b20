"""`infero service install|uninstall`: units that systemd accepts and rates well hardened.

Units are written under a staging root (`--root`, as packagers do) with `--bin` pointing at
the real `infero` executable of this environment, then checked by the real
`systemd-analyze verify` and `systemd-analyze security --offline=true`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infero.cli import app

INFERO = str(Path(sys.executable).parent / "infero")
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
MAX_EXPOSURE = 2.0


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(app, ["service", *args], env=env)
    assert result.exit_code == 0, result.output
    return result


def analyze(*args: str, user: bool, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze as the system or a user manager would run it (no manager needed)."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), "SYSTEMD_COLORS": "0"}
    scope = ["--user"] if user else []
    return subprocess.run(
        [ANALYZE, *args[:1], *scope, *args[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def exposure(unit: Path, *, user: bool, runtime_dir: Path) -> float:
    done = analyze("security", "--offline=true", str(unit), user=user, runtime_dir=runtime_dir)
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, done.stdout
    return float(found.group(1))


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_every_unit_verifies_clean_and_is_rated_2_or_lower(tmp_path: Path, user: bool) -> None:
    root = tmp_path / "stage"
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    scope = ["--user"] if user else []
    env = {"XDG_CONFIG_HOME": "/home/op/.config"}
    for kind in ("server", "llm", "mcp"):
        invoke("install", kind, "--root", str(root), "--bin", INFERO, *scope, env=env)
    invoke(
        "install", "llm", "--name", "gpu2", "--root", str(root), "--bin", INFERO, *scope, env=env
    )
    unit_dir = root / ("home/op/.config/systemd/user" if user else "etc/systemd/system")
    units = sorted(p.name for p in unit_dir.iterdir())
    assert units == ["infero-llm@.service", "infero-mcp@.service", "infero.service"]
    figures = {}
    for name in units:
        unit = unit_dir / name
        verified = analyze("verify", str(unit), user=user, runtime_dir=runtime)
        assert verified.returncode == 0, verified.stderr
        assert verified.stderr.strip() == "", verified.stderr
        figures[name] = exposure(unit, user=user, runtime_dir=runtime)
    assert all(figure <= MAX_EXPOSURE for figure in figures.values()), figures


def test_units_restart_crashes_but_not_a_drained_shutdown(tmp_path: Path) -> None:
    invoke("install", "llm", "--root", str(tmp_path), "--bin", INFERO)
    invoke("install", "server", "--root", str(tmp_path), "--bin", INFERO)
    llm = (tmp_path / "etc/systemd/system/infero-llm@.service").read_text(encoding="utf-8")
    server = (tmp_path / "etc/systemd/system/infero.service").read_text(encoding="utf-8")
    for unit in (llm, server):
        assert "Restart=on-failure\n" in unit  # SIGTERM/shutdown drains, then exits 0
        assert "RestartPreventExitStatus=2\n" in unit  # a bad setting is not retried forever
        assert "KillMode=mixed\n" in unit  # SIGTERM to infero only; it drains its children
        assert "DynamicUser=yes\n" in unit
        for directory in ("State", "Cache", "Logs", "Runtime"):
            assert f"{directory}Directory=infero/" in unit
    assert f"ExecStart={INFERO} llm\n" in llm
    assert "EnvironmentFile=-/etc/infero/worker.env\n" in llm
    assert "EnvironmentFile=-/etc/infero/worker-%i.env\n" in llm
    assert "Environment=RECONNECT=true\n" in llm
    assert "TimeoutStopSec=90s\n" in llm  # DRAIN_TIMEOUT 1m fits
    assert "EnvironmentFile=-/etc/infero/server.env\n" in server
    assert "ExecReload=/bin/kill -HUP $MAINPID\n" in server  # reloads the TLS certificate
    assert "TimeoutStopSec=330s\n" in server  # DRAIN_TIMEOUT 5m fits
    assert "LimitNOFILE=65536\n" in server


def test_install_prints_the_systemctl_lines_and_keeps_an_existing_env_file(
    tmp_path: Path,
) -> None:
    first = invoke("install", "llm", "--name", "gpu2", "--root", str(tmp_path), "--bin", INFERO)
    env_file = tmp_path / "etc/infero/worker-gpu2.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert "systemctl daemon-reload" in first.stdout
    assert "systemctl enable --now infero-llm@gpu2" in first.stdout
    env_file.write_text("CLIENT_KEY=mine\n", encoding="utf-8")
    again = invoke("install", "llm", "--name", "gpu2", "--root", str(tmp_path), "--bin", INFERO)
    assert "kept" in again.stdout
    assert env_file.read_text(encoding="utf-8") == "CLIENT_KEY=mine\n"
    user = invoke("install", "server", "--user", "--root", str(tmp_path), "--bin", INFERO)
    assert "systemctl --user enable --now infero" in user.stdout


def test_uninstall_reverses_install_and_keeps_what_others_still_use(tmp_path: Path) -> None:
    root = str(tmp_path)
    invoke("install", "llm", "--root", root, "--bin", INFERO)
    invoke("install", "llm", "--name", "gpu2", "--root", root, "--bin", INFERO)
    template = tmp_path / "etc/systemd/system/infero-llm@.service"
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "infero-llm@gpu2.service").symlink_to(template)

    gone = invoke("uninstall", "llm", "--name", "gpu2", "--root", root)
    assert not (tmp_path / "etc/infero/worker-gpu2.env").exists()
    assert not (wants / "infero-llm@gpu2.service").is_symlink()
    assert template.exists(), "infero-llm@main still uses the template"
    assert "systemctl stop infero-llm@gpu2" in gone.stdout

    main_env = tmp_path / "etc/infero/worker.env"
    main_env.write_text("CLIENT_KEY=edited\n", encoding="utf-8")
    invoke("uninstall", "llm", "--root", root)
    assert not template.exists()
    assert main_env.exists(), "an edited env file is kept without --purge"
    invoke("uninstall", "llm", "--root", root, "--purge")
    assert not main_env.exists()


def test_bad_names_and_paths_are_one_line_errors(tmp_path: Path) -> None:
    bad = CliRunner().invoke(app, ["service", "install", "llm", "--name", "../x", "--root", "/t"])
    assert bad.exit_code == 2
    assert "--name" in bad.output
    relative = CliRunner().invoke(app, ["service", "install", "server", "--bin", "infero"])
    assert relative.exit_code == 2
    assert "--bin must be an absolute path" in relative.output
