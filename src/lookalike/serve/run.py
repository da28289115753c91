"""Run the service with uvicorn (what ``lookalike serve`` calls).

One worker runs the app object in this process. Several workers need an import string, so the
settings travel to the worker processes as ``LOOKALIKE_*`` environment variables (the API key
only ever through the environment or a file, never on a command line) and each worker builds
its app with :func:`create_worker_app`.

This module owns the serving processes, so it is where a worker's torch threads are set
(``torch_threads``, once per worker at start-up); the app itself never changes them.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from lookalike.serve.settings import CONFIG_ENV, ENV_PREFIX, ServeSettings, load_settings
from lookalike.threads import set_process_threads

APP_FACTORY = "lookalike.serve.run:create_worker_app"


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's logging set-up plus the ``lookalike`` logger (errors with tracebacks)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["lookalike"] = {"handlers": ["default"], "level": level.upper(),
                                      "propagate": False}
    return config


def settings_env(settings: ServeSettings) -> dict[str, str]:
    """The settings as ``LOOKALIKE_*`` variables (the API key itself is left out: it is already
    in the environment or a file, where the workers read it too)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(exclude={"api_key"}).items():
        if value is None:
            continue
        if isinstance(value, list):
            text = ",".join(map(str, value))
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[ENV_PREFIX + name.upper()] = text
    env[ENV_PREFIX + "PROJECT"] = str(settings.project.expanduser().resolve())
    return env


def serve(settings: ServeSettings, *, config_file: str | os.PathLike[str] | None = None,
          log_level: str = "info", access_log: bool = True) -> None:
    """Serve until interrupted. Checks the settings first (no key -> refuse unless read-only).

    ``config_file`` is the file the settings were read from; worker processes read it again
    (that is how an API key kept in the config file reaches them).
    """
    import uvicorn

    settings.check_startable()
    common: dict[str, Any] = {"host": settings.host, "port": settings.port,
                              "log_config": log_config(log_level), "log_level": log_level,
                              "access_log": access_log, "server_header": False,
                              "timeout_graceful_shutdown": 10}
    if settings.workers == 1:
        from lookalike.serve.app import create_app

        set_process_threads(settings.torch_threads)  # this process is the one worker
        uvicorn.run(create_app(settings), **common)
        return
    os.environ.update(settings_env(settings))
    if config_file is not None:
        os.environ[CONFIG_ENV] = str(os.path.abspath(config_file))
    from lookalike.serve.watching import start_watcher

    if settings.watch is not None:
        import logging.config

        logging.config.dictConfig(common["log_config"])  # the watcher logs before uvicorn starts
    watcher = start_watcher(settings)  # here, once, not in every worker
    try:
        uvicorn.run(APP_FACTORY, factory=True, workers=settings.workers, **common)
    finally:
        if watcher is not None:
            watcher.stop()


def create_worker_app() -> Any:
    """Factory each uvicorn worker process calls (``uvicorn --factory``): settings from the
    environment; sets this worker's torch threads, then builds the app."""
    from lookalike.serve.app import create_app

    settings = load_settings()
    set_process_threads(settings.torch_threads)
    return create_app(settings)


class BackgroundServer:
    """Serve an app with uvicorn in a background thread on a free loopback port.

    For tests, benchmarks and notebooks::

        with BackgroundServer(create_app(settings)) as server:
            httpx.get(server.url + "/v1/health")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                     access_log=False, lifespan="on")
        self.server = uvicorn.Server(self.config)
        self._thread: Any = None

    @property
    def url(self) -> str:
        sockets = [s for server in self.server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 60.0) -> "BackgroundServer":
        import threading
        import time

        self._thread = threading.Thread(target=self.server.run, name="lookalike-server",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
