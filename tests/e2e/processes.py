"""Real server processes for end-to-end tests: free ports and start-up with retry."""

import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

START_ATTEMPTS = 3
PORT_TAKEN = "address already in use"


def free_port() -> int:
    """A port free right now (another process may still take it before we bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_http_server(
    command: Callable[[int], list[str]],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Callable[[int], Path],
    health_path: str = "/healthz",
    timeout_s: float = 30,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``command(port)`` and wait until ``health_path`` answers 200.

    When the server exits because its port was taken meanwhile (the race between
    :func:`free_port` and the server's bind), it is started again on another port.
    """
    for _ in range(START_ATTEMPTS):
        port = free_port()
        log_path = log(port)
        with log_path.open("wb") as sink:
            process = subprocess.Popen(
                command(port), cwd=cwd, env=dict(env), stdout=sink, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = log_path.read_text(errors="replace")
                if PORT_TAKEN in output.lower():
                    break
                raise AssertionError(f"server exited: {output[-2000:]}")
            try:
                if httpx.get(f"{url}{health_path}", timeout=1).status_code == 200:
                    return process, url
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            process.kill()
            raise AssertionError(f"server did not start: {log_path.read_text()[-2000:]}")
    raise AssertionError(f"no free port after {START_ATTEMPTS} attempts")
