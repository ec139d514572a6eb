"""The `mmgpt serve` command (what `python -m mmgpt.serve` runs too): it answers, and SIGTERM finishes the
request in flight, then returns exit status 0. Run in this process's main thread, where uvicorn takes signals."""
from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_serve import NAME, QUESTION, model_dir, png, user  # noqa: F401 - model_dir is a fixture

from mmgpt import cli
from mmgpt.inference import answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_finishes_in_flight_requests_and_exits_0(model_dir: Path,  # noqa: F811
                                                         caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    image = png((200, 30, 30))
    outcome: dict[str, object] = {}

    def client() -> None:
        """Wait for the server, queue a request, send SIGTERM while it waits, collect the reply."""
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    os.kill(os.getpid(), signal.SIGTERM)  # stop the server the test waits on
                    return
                time.sleep(0.05)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v1/chat/completions",
                                  json={"model": NAME, "messages": user(QUESTION, image)}, timeout=30)
            while httpx.get(f"{url}/health", timeout=5).json()["queued"] < 1 and not pending.done():
                time.sleep(0.02)
            outcome["queued_when_stopped"] = not pending.done()
            os.kill(os.getpid(), signal.SIGTERM)
            outcome["response"] = pending.result()
        try:
            httpx.get(f"{url}/health", timeout=2)
            outcome["after"] = "still serving"
        except httpx.TransportError:
            outcome["after"] = "closed"

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    # the first request waits --max-wait-ms for company: SIGTERM arrives while it is queued
    root_level = logging.getLogger().level
    try:
        with caplog.at_level("INFO", logger="mmgpt.serve.app"):
            status = cli.main(["serve", "--model", str(model_dir), "--port", str(port), "--max-wait-ms", "1000"])
    finally:
        logging.getLogger().setLevel(root_level)  # main() raises it to INFO, as a command does
    thread.join(30)
    assert status == 0
    assert outcome["queued_when_stopped"] is True
    response = outcome["response"]
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == answer(QUESTION, image, model=model_dir)
    assert outcome["after"] == "closed"
    assert "stopped by SIGTERM" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is before
