"""The operator console in headless Chromium, over real traffic through the broker.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them), as test_status_page.py does.
Screenshots (a wide screen and a phone's) are kept in the test's output directory; their paths are printed.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from broker.config import hash_key
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY
from tests.stacks import StackFactory

ADMIN_KEY = "sk-admin-console-page-01"
OTHER_KEY = "sk-other-tenant-key-01"
CHARTS = ("c-requests", "c-latency", "c-ttft", "c-errors", "c-tokens", "c-depth", "c-wait", "c-spend", "c-cumulative")

pytestmark = [pytest.mark.skipif(shutil.which("chromedriver") is None,
                                 reason="the console test needs chromium and chromium-driver (apt); .ci/run installs "
                                        "them"),
              pytest.mark.upstream(chunks=3)]


@pytest.fixture
def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def _traffic(base_url: str) -> tuple[str, str]:
    """Answers (some streamed, so with a first token), an upstream failure, rate-limit refusals, and
    another tenant's answers; returns the messages the SDK showed for the failure and for a refusal."""
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    for i in range(4):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q {i}"}], stream=i % 2 == 0)
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    refusal = ""
    for i in range(6):  # the tenant's 6 RPM, of which the 5 above took five
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"z {i}"}])
        except openai.RateLimitError as exc:
            refusal = exc.message
    assert refusal
    other = openai.OpenAI(base_url=base_url, api_key=OTHER_KEY, max_retries=0)
    for i in range(3):
        other.chat.completions.create(model="m", messages=[{"role": "user", "content": f"o {i}"}])
    return failed.value.message, refusal


def test_the_console_charts_real_traffic_filters_it_lists_failures_and_manages_keys(
        stack_factory: StackFactory, browser: Any, upstream: UpstreamServer, tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    stack = stack_factory(
        {"mock": {"kind": "mock", "tokens": 3, "first_token_delay_s": 0.03, "token_delay_s": 0.01},
         "up": {"kind": "openai", "base_url": upstream.base_url}},
        {"m": [{"provider": "mock", "model": "m", "input_per_mtok": 1000, "output_per_mtok": 2000}],
         "broken": [{"provider": "up", "model": "fail-500@page"}]},
        admin={"keys": [hash_key(ADMIN_KEY)], "queue_sample_s": 0.2},
        tenants={"test": {"keys": [hash_key(TEST_KEY)], "rpm": 6, "daily_budget_usd": 5.0,
                          "monthly_budget_usd": 20.0},
                 "other": {"keys": [hash_key(OTHER_KEY)]}})
    base_url = stack.up("mock", "up")
    root = base_url.removesuffix("/v1")
    failure, refusal = _traffic(base_url)

    browser.get(f"http://admin:{ADMIN_KEY}@{root.removeprefix('http://')}/console")  # Basic auth, as a prompt sends
    # The page redraws its tiles and tables on every refresh: an element found just before one is gone after it.
    wait = WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,))
    try:
        wait.until(lambda b: b.execute_script("return document.body.dataset.ready") == "1")
    except Exception:
        print(browser.page_source[:3000])
        raise

    def plotted(chart: str) -> list[list[float | None]]:
        return browser.execute_script(f"const c = window.consoleCharts[{chart!r}]; return c ? c.data.slice(1) : null")

    def anything(chart: str) -> bool:
        data = plotted(chart)
        return bool(data) and any(v for ys in data for v in ys if v is not None)

    # Every chart has real figures (the queues' samples may be all zeros: a mock drains at once).
    wait.until(lambda b: all(anything(c) for c in CHARTS if c not in ("c-depth", "c-wait")))
    wait.until(lambda b: any(v is not None for ys in plotted("c-depth") for v in ys))
    assert browser.execute_script("return document.querySelectorAll('.chart canvas').length") >= len(CHARTS)
    # By cause (upstream_4xx, upstream_5xx, timeout, rate_limit, ...): refusals arrive within a second or two.
    wait.until(lambda b: any(plotted("c-errors")[1]) and any(plotted("c-errors")[3]))
    assert not any(v for v in plotted("c-errors")[0] if v is not None)
    assert "budget" in " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, "#c-spend .u-legend th"))
    assert browser.find_element(By.ID, "error").text == ""

    # Spend: the table's figures are the ledger's, as /v1/usage says them.
    today = dt.datetime.now(dt.timezone.utc).date()
    usage = httpx.get(f"{base_url}/usage", params={"start": today.replace(day=1).isoformat()},
                      headers={"authorization": f"Bearer {TEST_KEY}"}).json()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#spend-table tbody tr")) == 2)
    shown = wait.until(lambda b: {row.find_element(By.TAG_NAME, "td").text: int(row.get_attribute("data-nanos"))
                                  for row in b.find_elements(By.CSS_SELECTOR, "#spend-table tbody tr")})
    assert shown["test"] == usage["total"]["cost_nanos"] > 0

    wide = tmp_path / "console-wide.png"
    browser.save_screenshot(str(wide))

    # A filter changes what is shown: the other tenant alone has 3 requests and no failure.
    Select(browser.find_element(By.ID, "f-tenant")).select_by_value("other")
    wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#tiles .tile .v").text == "3")
    wait.until(lambda b: {r.find_elements(By.TAG_NAME, "td")[2].text
                          for r in b.find_elements(By.CSS_SELECTOR, "#log tr.row")} == {"other"})
    assert not any(v for ys in plotted("c-errors") for v in ys if v is not None)
    Select(browser.find_element(By.ID, "f-tenant")).select_by_value("")

    def click_row(status: str) -> None:
        """Click the newest row with that status; the log re-renders every 5 s, so find it just before."""
        def clicked(b: Any) -> bool:
            try:
                next(r for r in b.find_elements(By.CSS_SELECTOR, "#log tr.row")
                     if r.find_elements(By.TAG_NAME, "td")[1].text.startswith(status)).click()
                return True
            except StaleElementReferenceException:
                return False
        wait.until(clicked)

    # The request log: failed only, newest first; a click shows the failure's error.
    browser.find_element(By.ID, "r-failed").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#log tr.row")
               and all("failed" in r.get_attribute("class") for r in b.find_elements(By.CSS_SELECTOR, "#log tr.row")))
    assert wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#log tr.row td:nth-child(2)").text.startswith("429"))
    click_row("502")
    shown_error = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#log tr.detail").text)
    assert failure.split(" - ", 1)[1] in shown_error and "upstream_5xx" in shown_error and "up/fail-500@page" in shown_error
    click_row("429")
    wait.until(lambda b: refusal.split(" - ", 1)[1] in b.find_element(By.ID, "log").text)
    browser.find_element(By.ID, "r-failed").click()

    # Keys: one made here answers requests, and once revoked here it is refused.
    Select(browser.find_element(By.ID, "k-tenant")).select_by_value("other")
    browser.find_element(By.ID, "k-name").send_keys("made-in-console")
    browser.find_element(By.ID, "k-rpm").send_keys("100")
    browser.find_element(By.ID, "k-create").click()
    secret = wait.until(lambda b: b.find_element(By.ID, "k-secret").text)
    made = openai.OpenAI(base_url=base_url, api_key=secret, max_retries=0)
    assert made.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
    row = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#keys-table tr[data-name='made-in-console']"))
    assert "100" in row.text and "other" in row.text
    shot_keys = tmp_path / "console-keys.png"
    browser.execute_script("document.getElementById('keys').scrollIntoView()")
    browser.save_screenshot(str(shot_keys))
    revoke = row.find_element(By.CSS_SELECTOR, "button.revoke")
    revoke.click()
    revoke.click()  # the second click confirms
    wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, "#keys-table tr[data-name='made-in-console']"))
    with pytest.raises(openai.AuthenticationError):
        made.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    browser.set_window_size(390, 844)  # a phone
    browser.execute_script("window.scrollTo(0, 0)")
    wait.until(lambda b: b.execute_script("return window.consoleCharts['c-requests'].width") < 400)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 400  # nothing runs off it
    phone = tmp_path / "console-phone.png"
    browser.save_screenshot(str(phone))
    for shot in (wide, shot_keys, phone):
        assert shot.stat().st_size > 10_000
        print(f"console screenshot: {shot}")
