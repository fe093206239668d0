"""The status page in headless Chromium: it asks for the admin key, then shows the live state.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them). The screenshot is kept
in the test's output directory (its path is printed) for a human to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from broker.config import hash_key
from tests.harness import TEST_KEY
from tests.stacks import StackFactory

ADMIN_KEY = "sk-admin-status-page-01"

pytestmark = pytest.mark.skipif(shutil.which("chromedriver") is None,
                                reason="the status page test needs chromium and chromium-driver (apt); .ci/run "
                                       "installs them")


@pytest.fixture
def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_the_status_page_shows_the_live_state_to_the_admin(stack_factory: StackFactory, browser: Any,
                                                           tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                          admin={"keys": [hash_key(ADMIN_KEY)]})
    base_url = stack.up("mock")
    root = base_url.removesuffix("/v1")
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    for i in range(3):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"page {i}"}])

    # Without the admin key: 401 with a Basic challenge (a browser asks for it); a tenant's key: 403.
    refused = httpx.get(f"{root}/status")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(f"{root}/status/data", headers={"authorization": f"Bearer {TEST_KEY}"}).status_code == 403

    host = root.removeprefix("http://")
    browser.get(f"http://admin:{ADMIN_KEY}@{host}/status")  # Basic auth, as a browser's prompt would send it
    try:
        WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "updated").text.startswith("updated"))
    except Exception:
        print(browser.page_source[:3000])
        raise
    providers = browser.find_element(By.ID, "providers").text
    assert "mock" in providers and "1" in providers  # one live worker
    lanes = browser.find_element(By.ID, "lanes").text
    assert "interactive" in lanes and "batch" in lanes
    WebDriverWait(browser, 10).until(lambda b: "mock/m" in b.find_element(By.ID, "deployments").text)
    assert "closed" in browser.find_element(By.ID, "deployments").text
    spend = browser.find_element(By.ID, "spend").text
    assert "test" in spend and "3" in spend
    assert browser.find_element(By.ID, "error").text == ""
    shot = tmp_path / "status-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"status page screenshot: {shot}")
