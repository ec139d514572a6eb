"""`mmgpt serve --ray`: a local Ray instance with 2 replicas behind Ray Serve's router; both answer, as answer() does.

Skipped, with that reason, only where Ray Serve is not installed outside CI (`pip install 'mmgpt[ray]'`; the test
extra and CI install it)."""
from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from optional import needs_module

needs_module("ray.serve", "pip install 'mmgpt[ray]'")

from test_serve import NAME, QUESTION, model_dir, png, user  # noqa: E402,F401 - model_dir is a fixture

from mmgpt.inference import answer  # noqa: E402
from mmgpt.serve.app import ServerSettings  # noqa: E402
from mmgpt.serve.ray_app import serve_on_ray  # noqa: E402


@pytest.mark.slow
def test_two_ray_replicas_both_answer(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # a local instance with its sessions and logs in a temp folder (short: Ray's socket paths must fit 107
    # bytes), no token in the user's home, never a cluster named by RAY_ADDRESS
    ray_tmp = tempfile.mkdtemp(prefix="mmgpt-ray-")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve_on_ray(str(model_dir), "cpu", ServerSettings(model_name=NAME), "127.0.0.1", port, 2, stop)
        except BaseException as e:  # reported by the test below
            errors.append(e)
            stop.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        replicas: set[str] = set()
        while len(replicas) < 2:
            assert not errors, errors
            assert time.monotonic() < deadline, f"saw replicas {replicas} within 90 s"
            try:
                response = httpx.get(f"{url}/health", timeout=5)
                if response.status_code == 200:
                    replicas.add(response.json()["replica"])
                    continue
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        image = png((200, 30, 30))
        body = {"model": NAME, "messages": user(QUESTION, image)}
        texts = {httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).json()["choices"][0]["message"]
                 ["content"] for _ in range(4)}
        assert texts == {answer(QUESTION, image, model=model_dir)}
    finally:
        stop.set()
        thread.join(60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not errors, errors
    assert not thread.is_alive()
