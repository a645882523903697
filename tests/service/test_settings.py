"""Settings: the `XC_` environment prefix, validation of ranges, and CLI flags over env."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import EXIT_BAD_SETTINGS, load_settings, main
from service.settings import Settings, default_settings, get_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start every test from an environment without XC_* variables."""
    for name in list(os.environ):
        if name.startswith("XC_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults() -> None:
    settings = Settings()
    assert settings.bundle == Path("models/demo")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert (settings.threads, settings.device, settings.log_level) == (0, "auto", "info")
    assert (settings.max_query_chars, settings.max_k, settings.default_k) == (512, 1000, 10)


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XC_BUNDLE", "/srv/bundles/prod")
    monkeypatch.setenv("XC_PORT", "9000")
    monkeypatch.setenv("XC_THREADS", "4")
    monkeypatch.setenv("XC_DEVICE", "cpu")
    monkeypatch.setenv("XC_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("PORT", "1234")  # unprefixed: not ours
    settings = Settings()
    assert settings.bundle == Path("/srv/bundles/prod")
    assert (settings.port, settings.threads, settings.device) == (9000, 4, "cpu")
    assert settings.log_level == "debug"


def test_get_settings_reads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XC_PORT", "9001")
    first = get_settings()
    monkeypatch.setenv("XC_PORT", "9002")
    assert get_settings() is first
    assert first.port == 9001
    get_settings.cache_clear()
    assert get_settings().port == 9002


def test_default_settings_ignore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XC_MAX_K", "50")
    assert Settings().max_k == 50
    assert default_settings().max_k == 1000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("port", "0"),
        ("port", "65536"),
        ("port", "http"),
        ("threads", "-1"),
        ("device", "tpu"),
        ("log_level", "loud"),
        ("max_query_chars", "0"),
        ("max_k", "0"),
        ("max_k", "1000000"),
        ("default_k", "0"),
        ("host", ""),
    ],
)
def test_invalid_env_is_rejected_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"XC_{name.upper()}", value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert name in str(info.value)


def test_default_k_must_not_exceed_max_k() -> None:
    with pytest.raises(ValidationError, match=r"default_k \(20\) must be <= max_k \(10\)"):
        Settings(max_k=10, default_k=20)
    assert Settings(max_k=10, default_k=10).default_k == 10


def test_batch_limit_must_fit_in_the_queue() -> None:
    with pytest.raises(ValidationError, match=r"max_batch_queries \(300\) must be <= max_queue"):
        Settings(max_batch_queries=300, max_queue=256)


def test_empty_api_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XC_API_KEY", "")
    assert Settings().api_key is None
    monkeypatch.setenv("XC_API_KEY", "k3y")
    key = Settings().api_key
    assert key is not None and key.get_secret_value() == "k3y" and "k3y" not in repr(key)


def test_model_threads_share_the_cores_among_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert Settings(batch_workers=2).model_threads == 4
    assert Settings(batch_workers=3).model_threads == 2
    assert Settings(batch_workers=16).model_threads == 1
    assert Settings(batch_workers=2, threads=3).model_threads == 3


def test_cli_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XC_PORT", "9001")
    monkeypatch.setenv("XC_THREADS", "3")
    monkeypatch.setenv("XC_HOST", "0.0.0.0")
    settings = load_settings(["--port", "9002", "--bundle", "/tmp/b", "--host", "::1"])
    assert (settings.port, settings.host, settings.bundle) == (9002, "::1", Path("/tmp/b"))
    assert settings.threads == 3  # no flag: the environment still applies


def test_cli_invalid_settings_exit_before_serving(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "70000"]) == EXIT_BAD_SETTINGS
    assert "port" in capsys.readouterr().err


def test_engine_options_name_every_load_keyword_but_threads() -> None:
    """The server, the batch CLI and Ray load bundles with `engine_options`: a new keyword of
    `SearchEngine.load` with no setting behind it would be silently left at its default."""
    import inspect

    from service.search.engine import SearchEngine

    keywords = set(inspect.signature(SearchEngine.load).parameters) - {"bundle_dir", "threads"}
    settings = Settings(
        encoder_precision="int8",
        mach_precision="int8",
        lexical_weight=0.5,
        encoder_size="full",
        ranker="off",
    )
    options = settings.engine_options()
    assert set(options) == keywords
    assert options["precision"] == "int8" and options["mach_precision"] == "int8"
    assert options["encoder_size"] == "full" and Settings().encoder_size == "auto"
    assert options["lexical_weight"] == 0.5
    assert options["ranker"] == "off" and Settings().ranker == "auto"
    assert Settings().mach_precision == "auto"
