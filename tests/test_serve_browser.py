"""The playground page in a real headless chromium: choose an image, ask, and the streamed answer appears.

Needs Debian's chromium and chromium-driver (.ci/run installs them); skipped, with that reason, where they are absent
outside CI."""
from __future__ import annotations

from pathlib import Path

import pytest
from chromium import browser, require_chromium  # noqa: F401 - fixture
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_serve import NAME, model, model_dir, png, running_server  # noqa: F401 - fixtures

from mmgpt.inference import answer
from mmgpt.model import MMGPT


def test_without_chromium_the_browser_test_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs /nowhere/chromium and /nowhere/chromedriver: apt-get"):
        require_chromium("/nowhere/chromium", "/nowhere/chromedriver")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium chromium-driver"):
        require_chromium("/nowhere/chromium", "/nowhere/chromedriver")


@pytest.mark.slow
def test_playground_streams_the_answer(model: MMGPT, browser: webdriver.Chrome, tmp_path: Path) -> None:  # noqa: F811
    image = tmp_path / "shape.png"
    image.write_bytes(png((200, 30, 30), size=64, box=20))
    question = "what color is the shape?"
    expected = answer(question, image, model=model)
    with running_server(model) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 15)
        wait.until(lambda d: d.find_element(By.ID, "model").text == f"model: {NAME}")
        assert browser.find_element(By.ID, "send").get_attribute("disabled") is not None  # no image yet
        browser.find_element(By.ID, "image").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.ID, "send").get_attribute("disabled") is None)
        browser.find_element(By.ID, "question").send_keys(question)
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: "finish:" in d.find_element(By.ID, "stats").text)
        shown = browser.find_element(By.ID, "answer")
        assert shown.text == expected
        assert "streaming" not in (shown.get_attribute("class") or "")
        assert "prompt +" in browser.find_element(By.ID, "stats").text
        assert browser.execute_script("return document.getElementById('preview').naturalWidth") == 64
        browser.save_screenshot("/tmp/mmgpt-playground.png")
        # the page and its script and style come from the server itself (no CDN)
        sources = browser.execute_script(
            "return [...document.querySelectorAll('script[src], link[href]')].map(e => e.src || e.href)")
        assert sources and all(s.startswith(url) for s in sources)
