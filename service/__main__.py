"""Run the service: `python -m service [--bundle PATH] [--host H] [--port P] [--threads N]`.

Flags override the `XC_*` environment (see `service.settings`). One uvicorn worker serves the
app with our JSON logging (`log_config=None`). Exit status: 0 after a clean shutdown (uvicorn
re-raises SIGTERM/SIGINT after shutting down gracefully, so a signalled stop ends by that
signal), 1 when the bundle cannot be loaded, 2 for invalid settings. SIGTERM drains in-flight
requests for up to `XC_SHUTDOWN_TIMEOUT_S`; SIGHUP reloads the bundle (see `service.registry`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.logs import configure_logging
from service.settings import Settings

EXIT_LOAD_FAILED = 1
EXIT_BAD_SETTINGS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; each defaults to None so unset flags leave the env/default alone."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve a model bundle over HTTP (POST /search, GET /healthz, GET /readyz).",
        epilog="Every setting can also be given as an XC_* environment variable; flags win.",
    )
    parser.add_argument("--bundle", type=Path, help="model bundle directory (XC_BUNDLE)")
    parser.add_argument("--host", help="interface to listen on (XC_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (XC_PORT, default 8000)")
    parser.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime intra-op threads per batch worker, 0 = cores / workers (XC_THREADS)",
    )
    return parser.parse_args(argv)


def load_settings(argv: list[str] | None = None) -> Settings:
    """`XC_*` environment settings with the given flags on top (raises `ValidationError`)."""
    args = parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    """Read settings, start uvicorn, and return the process exit status."""
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        print(f"python -m service: invalid settings: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    configure_logging(settings.log_level)

    server: uvicorn.Server | None = None

    def stop_server() -> None:
        # Runs on the event loop when the bundle fails to load; uvicorn then shuts down.
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=stop_server)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,  # RequestContextMiddleware logs one JSON access line per request
        server_header=False,
        timeout_keep_alive=settings.keep_alive_s,
        # SIGTERM: stop accepting, let in-flight requests finish for up to this long.
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    server = uvicorn.Server(config)
    server.run()
    return EXIT_LOAD_FAILED if app.state.shared.registry.load_error else 0


if __name__ == "__main__":
    sys.exit(main())
