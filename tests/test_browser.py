"""The prediction viewer as a page: served by Voilà, opened in headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium; no browser is downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from floodlib.evaluation import format_rae, view_sample
from floodlib.pipeline import stages
from floodlib.training import load_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (`make test` installs them when run as root on Debian)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served_viewer(tiny_run, tmp_path):
    port = _free_port()
    log = open(tmp_path / "voila.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "floodlib.viewer", str(tiny_run), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the viewer did not start: {(tmp_path / 'voila.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1600,1200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_served_viewer_changes_sample_and_shows_floodlibs_rae(tiny_run, served_viewer, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    c_models = [row for row in json.loads((tiny_run / "C" / "summary.json").read_text())["ranking"]]
    test = stages.splits(stages.open_run(tiny_run), ["big_test"])["big_test"]

    def expected_rae(row, item):
        view = view_sample(load_model(tiny_run / "C" / row["model_path"]), test, item)
        return format_rae(view.rae, view.small_denominator), view.rae

    def text(selector):
        return browser.find_element(By.CSS_SELECTOR, selector).text

    def painted_picture(old_source: str | None = None) -> tuple[str, bytes]:
        """The picture's source and screenshot once a new one (another source than ``old_source``) has loaded:
        the bytes arrive with the message that changes the text, and the page decodes them after."""
        def loaded(driver):
            image = driver.find_element(By.CSS_SELECTOR, "img.floodlib-picture")
            source = image.get_attribute("src")
            ready = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
            return (source, image) if ready and source != old_source else False

        source, image = wait.until(loaded)
        return source, image.screenshot_as_png

    wait = WebDriverWait(browser, 120)
    browser.get(served_viewer)
    wait.until(lambda driver: "big_test[0]" in text(".floodlib-details") and "RAE" in text(".floodlib-rae"))
    source, before = painted_picture()
    assert text(".floodlib-rae") == expected_rae(c_models[0], 0)[0]

    browser.find_element(By.CSS_SELECTOR, ".floodlib-next").click()
    wait.until(lambda driver: "big_test[1]" in text(".floodlib-details"))
    source, after = painted_picture(source)
    assert after != before
    shown, value = text(".floodlib-rae"), expected_rae(c_models[0], 1)
    assert shown == value[0]
    assert float(shown.split()[1]) == pytest.approx(value[1], rel=1e-3)

    other = f"C/{c_models[1]['name']}"
    wanted = expected_rae(c_models[1], 1)[0]
    Select(browser.find_element(By.CSS_SELECTOR, ".floodlib-model select")).select_by_visible_text(other)
    wait.until(lambda driver: text(".floodlib-rae") == wanted)
    assert "big_test[1]" in text(".floodlib-details") and text(".floodlib-error") == ""

    # the whole-domain mode: one click, and the first test plan is predicted from its start, step by step
    from floodlib.data.dataset import discover_plans, split_plans
    from floodlib.data.store import read_simulation
    from floodlib.predict import predict_plan

    source, patch_picture = painted_picture()
    browser.find_element(By.XPATH, "//*[contains(@class, 'floodlib-mode')]//button[normalize-space()='whole domain']"
                         ).click()
    wait.until(lambda driver: "over the whole domain" in text(".floodlib-rae") or text(".floodlib-error"))
    assert text(".floodlib-error") == "" and "start 0 min · step 1 of 2 (20 min each)" in text(".floodlib-details")
    assert painted_picture(source)[1] != patch_picture
    plans = split_plans(discover_plans(tiny_run / "data"), stages.open_run(tiny_run).split_spec())
    simulation = read_simulation(plans["big_test"][0])
    rollout = predict_plan(load_model(tiny_run / "C" / c_models[1]["model_path"]), simulation, start_s=0, steps=1,
                           delta_t_s=1200)
    truth, start = simulation.water_depth[20].astype(float), simulation.water_depth[0].astype(float)
    expected = abs(rollout.depths[1] - truth).sum() / abs(truth - start).sum()
    assert float(text(".floodlib-rae").split()[1]) == pytest.approx(expected, rel=1e-3)
