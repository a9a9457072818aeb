"""In a real browser: Debian's chromium, headless, driven by selenium. Open the page, click Generate on the first
tab, wait for the image, save a screenshot, and check that the page shows no error.

Needs `apt-get install chromium chromium-driver` (done by .ci/run) and `pip install selenium`. The server runs
with the embedded trained weights, as a newcomer sees it. The screenshot goes to runs/screenshots/
(or $ZOO_SCREENSHOTS) and its path, with the time from launch to the first image, is printed (pytest -s).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from test_app_e2e import ROOT, serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1300",
)
WAIT = 60  # seconds for the page and for the first image

if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip("chromium is absent: apt-get install -y chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: pip install selenium")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_folder() -> Path:
    folder = Path(os.environ.get("ZOO_SCREENSHOTS", ROOT / "runs" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_first_click_draws_an_image_without_errors(browser, tmp_path, record_property):
    launched = time.monotonic()
    with serve(ROOT, tmp_path / "app.log", tiny=False) as url:  # the real first screen: embedded weights
        browser.get(url)
        button = WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "generate"))
        button.click()
        images = WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#images img"))
        first_image = time.monotonic() - launched
        WebDriverWait(browser, WAIT).until(lambda d: "image(s) in" in d.find_element(By.ID, "generate-info").text)
        shot = screenshot_folder() / "app-first-image.png"
        browser.save_screenshot(str(shot))
        errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".toast-body.error, .toast-wrap .error")]
        src = images[0].get_attribute("src")
        natural_width = browser.execute_script("return arguments[0].naturalWidth", images[0])
    record_property("screenshot", str(shot))
    record_property("launch_to_first_image_s", round(first_image, 1))
    print(f"screenshot: {shot}; launch to first image: {first_image:.1f} s")
    assert errors == [], f"the page shows errors: {errors}"
    assert src.endswith(".png") and natural_width == 64
    assert shot.stat().st_size > 10_000
