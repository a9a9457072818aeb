"""In a real browser: Debian's chromium, headless, driven by selenium, against the app with its embedded trained
weights, as a newcomer sees it. Each view: open its tab, click its button, wait for its images, save a
screenshot, and check that the page shows no error and that every image is displayed at least 256 px wide.

Needs `apt-get install chromium chromium-driver` (done by .ci/run) and `pip install selenium`. Screenshots go
to runs/screenshots/ (or $ZOO_SCREENSHOTS); their paths, with the time from launch to the first image, are
printed (pytest -s).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zoo.app.server import serve

ROOT = Path(__file__).resolve().parents[1]
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
    "--window-size=1400,1400",
)
WAIT = 90  # seconds for the page and for a view's images (a cold pipeline load included)
MIN_SHOWN = 256  # displayed width of every image, in CSS pixels

if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip("chromium is absent: apt-get install -y chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: pip install selenium")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# (tab label, button id, images selector, file name): each view's first click.
VIEWS = [
    ("Forward noise", "add-noise", "#noise-image img", "forward-noise"),
    ("Conditioning switch", "switch", "#switch-image img", "conditioning"),
    ("Image to image", "image-to-image", "#img2img-images img", "image-to-image"),
    ("Samplers", "compare-samplers", "#sampler-images img", "samplers"),
    ("Swap a part", "swap", "#swap-images img", "swap"),
    ("Autoencoders", "inspect-autoencoders", "#autoencoder-images img", "autoencoders"),
    ("One step", "open-step", "#step-images img", "one-step"),
    ("Loss", "measure-loss", "#loss-image img", "loss"),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Iterator[tuple]:
    """One server with the embedded weights, one headless chromium on its page; the time from launch."""
    launched = time.monotonic()
    with serve(ROOT, tmp_path_factory.mktemp("browser") / "app.log", tiny=False) as url:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.get(url)
            yield driver, launched
        finally:
            driver.quit()


def screenshot(driver, name: str) -> Path:
    folder = Path(os.environ.get("ZOO_SCREENSHOTS", ROOT / "runs" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / f"app-{name}.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    return shot


def shown_images(driver, selector: str) -> list:
    """The selector's images once all have loaded (a natural width) and are laid out (a displayed width)."""

    def ready(d):
        found = d.find_elements(By.CSS_SELECTOR, selector)
        loaded = [i for i in found if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)]
        return found if found and len(loaded) == len(found) else False

    return WebDriverWait(driver, WAIT).until(ready)


def errors(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".toast-body.error, .toast-wrap .error")]


# The width the picture itself takes on screen: its box, less what object-fit leaves empty.
SHOWN_WIDTH = """
const img = arguments[0], box = img.getBoundingClientRect(), fit = getComputedStyle(img).objectFit;
const nw = img.naturalWidth, nh = img.naturalHeight;
let w = box.width;
if (fit === "contain" || fit === "scale-down") w = Math.min(box.width, box.height * nw / nh);
if (fit === "scale-down" || fit === "none") w = Math.min(w, nw);
return [w, nw];
"""


def widths(driver, images: list) -> list[tuple[int, int]]:
    """(displayed width of the picture, natural width) of each image."""
    return [tuple(round(v) for v in driver.execute_script(SHOWN_WIDTH, image)) for image in images]


def test_first_click_draws_an_image_without_errors(page, record_property):
    driver, launched = page
    button = WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, "generate"))
    button.click()
    images = shown_images(driver, "#images img")
    first_image = time.monotonic() - launched
    WebDriverWait(driver, WAIT).until(lambda d: "image(s) in" in d.find_element(By.ID, "generate-info").text)
    shot = screenshot(driver, "first-image")
    record_property("launch_to_first_image_s", round(first_image, 1))
    print(f"launch to first image: {first_image:.1f} s")
    assert errors(driver) == [], f"the page shows errors: {errors(driver)}"
    src = images[0].get_attribute("src")
    (shown, natural), *_ = widths(driver, images)
    assert src.endswith(".png") and natural == 64 and shown >= MIN_SHOWN  # native pixels, shown large
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize(("tab", "button", "selector", "name"), VIEWS, ids=[v[3] for v in VIEWS])
def test_each_view_shows_its_images_large_and_no_error(page, tab, button, selector, name):
    driver, _ = page
    driver.find_element(By.XPATH, f"//button[@role='tab'][contains(., '{tab}')]").click()
    if button is not None:
        WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, button)).click()
    images = shown_images(driver, selector)
    time.sleep(0.5)  # let the layout settle before measuring
    shot = screenshot(driver, name)
    assert errors(driver) == [], f"{tab}: the page shows errors: {errors(driver)}"
    narrow = [w for w in widths(driver, shown_images(driver, selector)) if w[0] < MIN_SHOWN]
    assert narrow == [], f"{tab}: images shown narrower than {MIN_SHOWN} px (shown, natural): {narrow}"
    assert shot.stat().st_size > 10_000 and len(images) >= 1
