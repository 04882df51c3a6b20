"""The Dockerfile and compose.yaml follow the deployment rules; the wheel they install builds.

No Docker daemon runs here: the files are parsed and checked, the wheel the image installs is
built for real, and the image's HEALTHCHECK probe runs against a real server.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from infero.common import healthcheck
from support.server import running_server

ROOT = Path(__file__).resolve().parents[2]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_pinned_non_root_exec_form_and_health_checked() -> None:
    steps = instructions(ROOT / "Dockerfile")
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for base in froms:
        image = base.split()[0]
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), (
            f"{image}: a slim Python base pinned by version"
        )
    runtime = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    words = [word for word, _ in runtime]
    assert any(w == "COPY" and a.startswith("--from=") for w, a in runtime)
    (user,) = [a for w, a in runtime if w == "USER"]
    assert user.split(":")[0] not in ("root", "0"), "the runtime stage runs as a non-root user"
    assert words.index("USER") < words.index("ENTRYPOINT")
    (entrypoint,) = [a for w, a in runtime if w == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["infero"], "exec form, so infero gets SIGTERM and drains"
    (cmd,) = [a for w, a in runtime if w == "CMD"]
    assert json.loads(cmd) == ["server"]
    (check,) = [a for w, a in runtime if w == "HEALTHCHECK"]
    probe = json.loads(check[check.index("CMD") + 3 :].strip())
    assert probe == ["python", "-m", "infero.common.healthcheck"]
    assert not any(w == "ADD" for w, _ in steps), "COPY only: nothing fetched at build time"
    install = " ".join(a for w, a in steps if w == "RUN")
    assert "pip wheel --no-deps --wheel-dir /wheels ." in install
    build = steps[: len(steps) - len(runtime)]
    assert ("ARG", "INFERO_BUILD_SHA=unknown") in build, "the wheel embeds the sha it is given"
    assert any(w == "COPY" and "hatch_build.py" in a for w, a in build)
    assert "[mcp]" in install, "one image for server, llm and mcp (stdio/SSE providers)"


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "*" in lines
    assert {"!pyproject.toml", "!README.md", "!hatch_build.py", "!src/"} <= set(lines)


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return data


def test_compose_runs_redis_two_servers_behind_a_proxy_a_connector_and_the_demo_backend() -> None:
    services = _compose()["services"]
    servers = [s for s in services.values() if s.get("command") == ["server"]]
    assert len(servers) == 2
    for name, server in services.items():
        if server.get("command") != ["server"]:
            continue
        assert server["image"] == "infero:local"
        env = server["environment"]
        assert env["REDIS_ADDR"].startswith("redis://redis:")
        assert env["PEER_KEY"].startswith("${PEER_KEY")
        assert (env["INSTANCE_ID"], env["INSTANCE_ADDR"]) == (name, f"http://{name}:8080")
        assert server["depends_on"]["redis"]["condition"] == "service_healthy"
        assert server["restart"] == "on-failure"  # a drained shutdown exits 0: not restarted
        assert server["stop_grace_period"] == "330s"  # DRAIN_TIMEOUT 5m fits
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", services["redis"]["image"])

    proxy = services["proxy"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", proxy["image"])
    mounted = proxy["volumes"][0].split(":")[0]
    conf = (ROOT / mounted).read_text(encoding="utf-8")
    names = [name for name, s in services.items() if s.get("command") == ["server"]]
    for name in names:
        assert f"server {name}:8080;" in conf
    for directive in ("proxy_buffering off;", "proxy_read_timeout 1h;", "Upgrade $http_upgrade"):
        assert directive in conf
    proxy_ip = proxy["networks"]["infero"]["ipv4_address"]
    assert all(s["environment"]["TRUSTED_PROXIES"] == proxy_ip for s in servers)

    llm = services["llm"]
    assert llm["image"] == "infero:local"
    assert llm["command"] == ["llm"]
    assert llm["environment"]["SERVER_URL"] == "ws://proxy/api/llm/connect"
    assert llm["environment"]["COMPLETION_BASE_URL"].startswith("http://demo-backend:")
    assert "infero.demo.backend" in "".join(services["demo-backend"]["command"])


def test_the_wheel_the_image_installs_builds_with_every_command_and_asset(
    tmp_path: Path,
) -> None:
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("infero-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
        meta = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    for module in ("infero/common/healthcheck.py", "infero/server/tls.py", "infero/py.typed"):
        assert module in names
    assert "infero/server/static/dashboard.html" in names
    for script in ("infero = infero.cli:main", "infero-llm =", "infero-mcp ="):
        assert script in scripts
    assert "Provides-Extra: mcp" in meta


@pytest.mark.parametrize(
    ("cmdline", "kind"),
    [
        (b"/opt/infero/bin/python\0/opt/infero/bin/infero\0server\0", "server"),
        (b"/opt/infero/bin/python\0/opt/infero/bin/infero\0", "server"),
        (b"/opt/infero/bin/python\0/opt/infero/bin/infero\0llm\0", "llm"),
        (b"python\0/usr/local/bin/infero-mcp\0--reconnect\0", "mcp"),
    ],
)
def test_the_health_probe_knows_which_command_the_container_runs(cmdline: bytes, kind: str) -> None:
    assert healthcheck.command(cmdline) == kind


def test_the_health_probe_urls() -> None:
    assert healthcheck.probe_url("server", {}) == "http://127.0.0.1:8080/healthz"
    tls = {"PORT": "8443", "TLS_CERT_FILE": "/c.pem"}
    assert healthcheck.probe_url("server", tls) == "https://127.0.0.1:8443/healthz"
    status = {"STATUS_ADDR": "0.0.0.0:4555"}
    assert healthcheck.probe_url("llm", status) == "http://127.0.0.1:4555/status"
    assert healthcheck.probe_url("mcp", {}) is None


async def test_the_health_probe_answers_for_a_real_server() -> None:
    async with running_server() as server:
        url = server.url + "/healthz"
        assert await asyncio.to_thread(healthcheck.check, url)
    assert not await asyncio.to_thread(healthcheck.check, url)  # stopped: unhealthy
