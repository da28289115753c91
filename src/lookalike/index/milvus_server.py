"""A local Milvus standalone server (PyPI package ``milvus``) for tests, benchmarks and a laptop.

``LocalMilvus(folder).start()`` runs the server binary the ``milvus`` package ships (Milvus
2.3, with embedded etcd and RocksMQ) with its data in ``folder``, and serves gRPC on a free port
on 127.0.0.1 (``.uri``); its embedded etcd also gets free ports, so several servers can run on
one machine. ``stop()`` ends it; ``start()`` again serves the same data on the same ports.
``time_tick_ms`` shortens the proxy's time tick (default 200 ms), which bounds a Strong read's
wait (benchmarks/milvus_tick.py).
Offline: nothing is downloaded. Not for production (see docs/deploy.md).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from lookalike.errors import LookalikeError

#: The server's internal gRPC ports besides the proxy's and etcd's (names from the package).
_ROLE_PORTS = ("root_coord_port", "proxy_internal_port", "query_coord_port", "query_node_port",
               "index_coord_port", "index_node_port", "data_coord_port", "data_node_port")


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(folder: Path, etcd_client: int, etcd_peer: int, time_tick_ms: int | None) -> Any:
    """The ``milvus`` package's config with two changes: ports are checked with SO_REUSEADDR as
    the server binds them (its own check fails for a port in TIME_WAIT right after a stop), and
    the embedded etcd listens on ``etcd_client``/``etcd_peer`` instead of its fixed 2379/2380
    (so several local servers, or another etcd, can run on one machine); ``time_tick_ms`` sets
    the proxy's time-tick interval (default 200 ms: the wait of a Strong read)."""
    from milvus import MilvusServerConfig

    folder.mkdir(parents=True, exist_ok=True)
    etcd = folder / "etcd.yaml"
    peer, client = f"http://127.0.0.1:{etcd_peer}", f"http://127.0.0.1:{etcd_client}"
    etcd.write_text(f"name: default\nlisten-peer-urls: {peer}\nlisten-client-urls: {client}\n"
                    f"advertise-client-urls: {client}\ninitial-advertise-peer-urls: {peer}\n"
                    f"initial-cluster: default={peer}\n")
    default = MilvusServerConfig()
    template = default.template_text
    marker = "  endpoints: localhost:{{ etcd_port(int): 2379 }}\n"
    if marker not in template:
        raise LookalikeError("unexpected milvus package config template: etcd endpoints missing")
    template = template.replace(marker, marker + f"  config:\n    path: {etcd}\n")
    if time_tick_ms is not None:
        tick = "  timeTickInterval: 200 # ms, the interval that proxy synchronize the time tick\n"
        if tick not in template:
            raise LookalikeError("unexpected milvus package config template: no proxy time tick")
        template = template.replace(tick, f"  timeTickInterval: {int(time_tick_ms)}\n")
    template_file = folder / "milvus.yaml.template"
    template_file.write_text(template)

    class Config(MilvusServerConfig):
        def try_bind_port(self, port: int) -> socket.socket | None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except OSError:
                sock.close()
                return None

    config = Config(template=str(template_file))
    config.glog_conf_file = default.glog_conf_file  # set only for the packaged template
    return config


class LocalMilvus:
    """One local Milvus server process with its data in ``folder``."""

    def __init__(self, folder: str | Path, port: int | None = None,
                 time_tick_ms: int | None = None) -> None:
        from milvus import MilvusServer

        self.folder = Path(folder)
        self.port = port or free_port()
        etcd_client, etcd_peer = free_port(), free_port()
        # Every port is the kernel's pick, not the package's fixed defaults (53100, 19529, ...):
        # two servers starting at once would otherwise both check a default as free, then race.
        roles = {key: free_port() for key in _ROLE_PORTS}
        self._server = MilvusServer(config=_config(self.folder / "lookalike", etcd_client,
                                                   etcd_peer, time_tick_ms),
                                    proxy_port=self.port, etcd_port=etcd_client, **roles)
        self._server.webservice_port = free_port()  # health and metrics (default 9091)
        self._server.set_base_dir(str(self.folder))

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        proc = self._server.server_proc
        return None if proc is None else int(proc.pid)

    def start(self) -> "LocalMilvus":
        """Start the server and wait until it answers (about 10 s)."""
        started = time.monotonic()
        try:
            self._server.start()
        except (RuntimeError, TimeoutError) as error:
            self._server.stop()
            raise LookalikeError(f"local milvus in {self.folder} did not start: {error}") from None
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self, grace: float = 3.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``grace`` seconds (a clean shutdown
        measured over 20 s; acknowledged writes survive a kill, they are in the RocksMQ log)."""
        proc = self._server.server_proc
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
                proc.kill()
                proc.wait(timeout=10)
        self._server.stop()

    def __enter__(self) -> "LocalMilvus":
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()
