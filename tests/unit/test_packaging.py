"""What a fresh clone gives: docker compose's offline demo, the Makefile's knobs, CI's single
install, and what git ignores. (Docker cannot run here: the compose file is checked by parsing
it; tests/integration/test_first_run.py runs the image's command outside Docker.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
# Uvicorn's graceful shutdown (20 s), then the reporter's two bounded flush steps (10 s each).
SIGTERM_NEEDS_S = 20 + 10 + 10
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104 - what a container listens on


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _seconds(duration: str) -> float:
    """Compose's duration syntax: 1m30s, 45s, 500ms."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _dockerfile_cmd() -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmds = [json.loads(line.removeprefix("CMD ")) for line in lines if line.startswith("CMD ")]
    assert len(cmds) == 1
    return list(cmds[0])


def _option(command: list[str], name: str) -> str:
    assert name in command, command
    return command[command.index(name) + 1]


def test_compose_needs_no_env_file() -> None:
    for name, service in _compose()["services"].items():
        env_files = service.get("env_file", [])
        for entry in env_files if isinstance(env_files, list) else [env_files]:
            assert isinstance(entry, dict) and entry.get("required") is False, (name, entry)


def test_compose_api_is_the_offline_demo_reachable_from_the_host() -> None:
    api = _compose()["services"]["api"]
    command = api["command"]
    # The image's own command, plus where the emulator keeps state and the worker count.
    assert command[: len(_dockerfile_cmd())] == _dockerfile_cmd()
    assert _option(command, "--host") == EVERY_ADDRESS
    assert _option(command, "--emulator-host") == EVERY_ADDRESS  # its pages reach the host
    port = _option(command, "--port")
    published = {str(p) for p in api["ports"]}
    assert f"{port}:{port}" in published
    assert "12111:12111" in published  # the emulator's hosted Checkout and portal pages
    # No PUBLIC_URL in the demo: it defaults to where serve listens, which the host reaches.
    assert "METERAPI_PUBLIC_URL" not in api.get("environment", {})
    assert "METERAPI_STRIPE_SECRET_KEY" not in api.get("environment", {})


def test_compose_waits_for_the_flush_on_sigterm() -> None:
    api = _compose()["services"]["api"]
    assert _seconds(str(api["stop_grace_period"])) > SIGTERM_NEEDS_S


def test_the_image_installs_the_package_not_the_checkout() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install" in dockerfile
    assert " -e " not in dockerfile and "--editable" not in dockerfile
    assert "COPY alembic" not in dockerfile  # the migrations ship inside the package
    command = _dockerfile_cmd()
    assert command[:2] == ["meterapi", "serve"]
    assert _option(command, "--emulator-host") == EVERY_ADDRESS


def test_the_emulator_state_file_is_ignored_by_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "meterapi-emulator.json"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0


def _make_n(*args: str) -> str:
    done = subprocess.run(
        ["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_make_run_takes_port_and_host() -> None:
    assert "meterapi serve --host 127.0.0.1 --port 8000" in _make_n("run")
    assert "meterapi serve --host 0.0.0.0 --port 18010" in _make_n(
        "run", "PORT=18010", "HOST=0.0.0.0"
    )


def test_make_test_shows_skip_reasons() -> None:
    assert re.search(r"pytest -rs\b", _make_n("test"))


def test_ci_installs_once_through_the_makefile_stamp() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install" not in ci  # the Makefile's stamp rule installs; `make test` sees it
    assert "make .venv/.installed" in ci
    assert ".ci/wheel-check" in ci
    wheel_check = (ROOT / ".ci" / "wheel-check").read_text()
    assert "meterapi db upgrade" in wheel_check or "first_run" in wheel_check
    assert " -e " not in wheel_check
