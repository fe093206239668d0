"""The operator console (api/routes/console.py) in headless Chromium, over real traffic: WIP."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from broker.config import hash_key
from tests.harness import TEST_KEY
from tests.stacks import StackFactory
from tests.fakes.openai_upstream import UpstreamServer

ADMIN_KEY = "sk-admin-console-01"

pytestmark = [pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs chromium-driver"),
              pytest.mark.upstream(chunks=3)]


@pytest.fixture
def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_explore(stack_factory: StackFactory, browser: Any, upstream: UpstreamServer) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3, "token_delay_s": 0.02, "first_token_delay_s": 0.05}, "up": {"kind": "openai", "base_url": upstream.base_url}},
                          {"m": [{"provider": "mock", "model": "m", "input_per_mtok": 1000, "output_per_mtok": 2000}], "broken": [{"provider": "up", "model": "fail-500"}]},
                          admin={"keys": [hash_key(ADMIN_KEY)], "queue_sample_s": 0.5},
                          tenants={"test": {"keys": [hash_key(TEST_KEY)], "rpm": 8, "daily_budget_usd": 5}})
    base_url = stack.up("mock", "up")
    root = base_url.removesuffix("/v1")
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    for i in range(5):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"page {i}"}], stream=i % 2 == 0)
    for i in range(2):
        with pytest.raises(openai.APIError):
            client.chat.completions.create(model="broken", messages=[{"role": "user", "content": f"x {i}"}])
    refused = 0
    for i in range(4):
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"y {i}"}])
        except openai.RateLimitError:
            refused += 1
    assert refused >= 2
    time.sleep(1.5)
    h = {"authorization": f"Bearer {ADMIN_KEY}"}
    print(httpx.get(f"{root}/console/series?window=1h", headers=h).json()["totals"])
    print(httpx.get(f"{root}/console/log", headers=h).json()["data"][:3])
    print(httpx.get(f"{root}/console/spend", headers=h).json())
    host = root.removeprefix("http://")
    browser.get(f"http://admin:{ADMIN_KEY}@{host}/console")
    time.sleep(3)
    print(browser.get_log("browser") if hasattr(browser, "get_log") else "")
    browser.save_screenshot("/tmp/console-shots/wide.png")
    browser.set_window_size(400, 2400)
    time.sleep(1)
    browser.save_screenshot("/tmp/console-shots/phone.png")
