"""A real headless chromium for the browser tests (Debian's chromium and chromium-driver; .ci/run installs them).

Without them a browser test is skipped with that reason outside CI and fails under CI (tests/optional.py)."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from optional import missing
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def require_chromium(chromium: str = CHROMIUM, driver: str = CHROMEDRIVER) -> None:
    """Skip (fail under CI) unless the browser and its driver are installed."""
    if not (shutil.which(chromium) and shutil.which(driver)):
        missing(f"needs {chromium} and {driver}: apt-get install chromium chromium-driver")


def start_chromium(profile: Path, width: int = 1100, height: int = 720) -> webdriver.Chrome:
    """A headless chromium with a window of width x height CSS pixels and its own profile folder."""
    require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    return driver


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A headless chromium with a 1100 x 720 window, quit after the test."""
    driver = start_chromium(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()
