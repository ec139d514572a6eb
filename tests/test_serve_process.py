"""`python -m mmgpt.serve` as its own process: it answers, and SIGTERM finishes the request in flight, then exits 0."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from test_serve import NAME, QUESTION, model_dir, png, user  # noqa: F401 - model_dir is a fixture

from mmgpt.inference import answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_finishes_in_flight_requests_and_exits_0(model_dir: Path) -> None:  # noqa: F811
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the first request waits --max-wait-ms for company: SIGTERM arrives while it is queued
    process = subprocess.Popen([sys.executable, "-m", "mmgpt.serve", "--model", str(model_dir), "--port", str(port),
                                "--max-wait-ms", "1500"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "server did not start within 60 s"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        image = png((200, 30, 30))
        body = {"model": NAME, "messages": user(QUESTION, image)}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=30)
            while httpx.get(f"{url}/health", timeout=5).json()["queued"] < 1:
                assert time.monotonic() < deadline and not pending.done()
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            response = pending.result()
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == answer(QUESTION, image, model=model_dir)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "Shutting down" in output and "stopped by SIGTERM" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
