"""`lookalike serve` as a real process in tests: wait until it answers, or say why it died."""

from __future__ import annotations

import subprocess
import time
from typing import BinaryIO

import httpx


def wait_ready(url: str, server: subprocess.Popen, log: BinaryIO, timeout: float = 180.0) -> None:
    """Return once ``url``'s ``/v1/ready`` answers 200; fail with the end of the server's ``log``
    (a file, not a pipe nobody reads, which a chatty server could fill) if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise AssertionError(f"lookalike serve exited: {log.read().decode()[-800:]}")
        try:
            if httpx.get(f"{url}/v1/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("lookalike serve did not become ready")
