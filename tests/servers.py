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


class ServerThread:
    """An ASGI app served by uvicorn (as `osum serve` configures it) on a free loopback port, in a thread of
    this process, so a test can reach into the model it serves: `with ServerThread(app) as base: ...`."""

    def __init__(self, app):
        import threading

        from osum.serve.server import uvicorn_server

        self.port = free_port()
        self.server = uvicorn_server(app, "127.0.0.1", self.port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> str:
        import httpx

        self.thread.start()
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return f"http://127.0.0.1:{self.port}"
            except httpx.HTTPError:
                pass
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError(f"the server thread did not come up on port {self.port}")
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
