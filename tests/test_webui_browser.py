"""The web UI in a real browser (Debian's chromium + chromedriver, driven by Selenium): a person uploads an
image, asks, and reads the streamed answer; then clicks one of the examples. A screenshot is saved.

run_tests.sh installs chromium and chromium-driver when it can (root, apt-get); elsewhere this is skipped."""

import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image
from runs import argv, env, free_port, tiny_setup

import train
from common import IMAGE_MARKER
from model import load_checkpoint

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny VLM trained to name the colour of a solid image, so the page shows a readable answer."""
    root = tmp_path_factory.mktemp("webui")
    setup = tiny_setup(root)
    assert train.main(argv(setup, root / "ckpt", "--llm_mode", "full", steps=60)) == 0
    return root


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, seconds=120, what="the page"):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_upload_ask_and_click_an_example_in_chromium(trained, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    port = free_port()
    server = subprocess.Popen([sys.executable, "webui.py", "--model_weights", str(trained / "ckpt"), "--port",
                               str(port), "--max_new_tokens", "16"], env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"

    def up():
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(up, what="the web UI to start")
        browser.get(url)
        textarea = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "textarea"), what="the chat box")[0]
        header = browser.find_element(By.TAG_NAME, "body").text
        assert "ckpt" in header and "on cpu in float32" in header and "static decoding" in header
        image = trained / "data" / "red.png"
        browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(image))
        textarea.send_keys("What colour?")
        textarea.send_keys(Keys.ENTER)

        def answers():
            return [e.text.strip() for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="bot"]')
                    if e.text.strip()]

        first = wait_for(answers, what="the streamed answer")[0]
        model = load_checkpoint(str(trained / "ckpt"))
        expected = model.answer([[{"role": "user", "content": f"{IMAGE_MARKER}What colour?"}]],
                                [[Image.open(image).convert("RGB")]], max_new_tokens=16)[0]
        assert first == expected == "red"
        browser.save_screenshot(str(tmp_path / "webui.png"))
        print(f"screenshot: {tmp_path / 'webui.png'}")
        # an example from test_img/ is one click away: it fills the box (image and question), Enter asks
        example = browser.find_element(By.CSS_SELECTOR, '[data-testid="dataset-cell-2-0"]')
        browser.execute_script("arguments[0].scrollIntoView();", example)
        example.click()
        wait_for(lambda: textarea.get_attribute("value") == "Describe the image.", what="the example to fill the box")
        textarea.send_keys(Keys.ENTER)
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, '[data-testid="bot"]')) >= 2,
                 what="the example's answer")
        users = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="user"]')]
        assert "Describe the image." in users
        assert (tmp_path / "webui.png").stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=30)
