"""The app as a separate process on a free local port, for the end-to-end tests and the soak benchmark.

with serve(folder, log) as url: ...   # `python app.py` in folder (or zoo.app's main), always stopped
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 120  # seconds for a cold start (imports torch, transformers, gradio) on a busy CPU


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"the app did not serve {url} within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def start(
    folder: Path, log: Path, *, tiny: bool = True, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """The app in `folder` (its app.py, else zoo.app's main) with tiny pipelines or the embedded weights, on a
    free local port, offline, serving: (the process, its URL). `env` adds environment variables."""
    port = free_port()
    settings = {
        **os.environ,
        "ZOO_APP_TINY": "1" if tiny else "0",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    command = ["app.py"] if (Path(folder) / "app.py").is_file() else ["-c", "from zoo.app import main; main()"]
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, *command], cwd=folder, env=settings, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process, log)
    except BaseException:
        stop(process)
        raise
    return process, url


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def serve(folder: Path, log: Path, *, tiny: bool = True, env: dict[str, str] | None = None) -> Iterator[str]:
    """start(...), yielding the URL; the app is always stopped afterwards."""
    process, url = start(folder, log, tiny=tiny, env=env)
    try:
        yield url
    finally:
        stop(process)
