"""Starting real servers on loopback for tests and benchmarks: a free port, and waiting until one answers."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120.0, log_path=None) -> None:
    """Poll `url` until it answers 200; fail (with the server's log) if the process dies or time runs out."""
    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.time() > deadline:
            log = open(log_path).read()[-3000:] if log_path else ""
            raise RuntimeError(f"server at {url} did not come up (exit {process.poll()})\n{log}")
        time.sleep(0.3)
