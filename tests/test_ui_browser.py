"""`lemo-nade ui` in a real browser (headless Chromium through Selenium): the run page
renders its table and SVG plots under the strict CSP, an iteration committed while the
page is open appears without a reload, hostile text shows as literal text, and a sweep
page shows its paper table and accuracy-vs-energy plot.

Skips, saying what is missing, without selenium, chromium or chromedriver (Debian:
``apt-get install chromium chromium-driver``; ``pip install selenium``)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lemo_nade.store import RunStore
from lemo_nade.ui import make_server
from test_report import CHAIN, make_run, record
from test_ui import HOSTILE, hostile_record, make_sweep

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SHOWN = "<script>alert('x')</script> red &amp; done\\x07"


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(
            "chromium or chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory(prefix="lemo-ui-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    run_dir = make_run(tmp_path / "runs" / "run-a", [*CHAIN, hostile_record(5, 4)])
    server = make_server([run_dir.parent], "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", run_dir
    finally:
        server.shutdown()
        server.server_close()


def waiting(driver: Any, seconds: float, poll: float = 0.5) -> Any:
    """A wait that reads again when the page re-renders the element it was reading: the
    table is rebuilt when an iteration commits, between finding a row and reading it."""
    return WebDriverWait(
        driver, seconds, poll_frequency=poll, ignored_exceptions=(StaleElementReferenceException,)
    )


def rows(driver: Any) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, "#iterations tbody tr"))


def test_run_page_renders_updates_live_and_shows_hostile_text_as_text(
    browser: Any, served: tuple[str, Path]
) -> None:
    base, run_dir = served
    browser.get(f"{base}/run?run=0/run-a")
    wait = waiting(browser, 10)
    wait.until(lambda d: len(rows(d)) == 6)
    cells = [td.text for td in rows(browser)[3].find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "★ 3" and cells[2] == "ok" and cells[4] == "90.00%"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plots svg")) == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plots svg circle")) >= 10

    # hostile text: literal in the table, never run (no alert, no extra script element)
    assert rows(browser)[5].find_elements(By.CSS_SELECTOR, "td.error")[0].text == SHOWN
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 3
    rows(browser)[5].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail pre.error-text"))
    assert browser.find_element(By.CSS_SELECTOR, "#detail pre.error-text").text == SHOWN
    assert "\x1b" not in browser.page_source and "[31m" not in browser.page_source
    assert HOSTILE not in browser.page_source

    # a lineage node: its tooltip is made on hover, a click selects its iteration
    dot = browser.find_elements(By.CSS_SELECTOR, "#plots svg:last-child circle")[3]
    ActionChains(browser).move_to_element(dot).perform()
    wait.until(lambda d: dot.find_elements(By.TAG_NAME, "title"))
    assert dot.find_element(By.TAG_NAME, "title").get_attribute("textContent").startswith("#3 ok")
    dot.click()
    wait.until(lambda d: "selected" in (rows(d)[3].get_attribute("class") or ""))

    # a committed iteration appears within 5 s, without a reload
    browser.execute_script("window.notReloaded = true;")
    with RunStore.open(run_dir, writer=True) as store:
        store.record_iteration(record(6, 3, 0.95, params=15000))
        start = time.monotonic()
        waiting(browser, 5, 0.1).until(lambda d: len(rows(d)) == 7)
    assert time.monotonic() - start < 5
    assert browser.execute_script("return window.notReloaded === true;")
    assert rows(browser)[6].find_elements(By.TAG_NAME, "td")[0].text == "★ 6"

    # the strict CSP held: nothing was blocked, nothing went wrong
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_runs_list_links_to_the_run(browser: Any, served: tuple[str, Path]) -> None:
    base, _ = served
    browser.get(base + "/")
    wait = waiting(browser, 10)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs tbody tr"))
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr td")]
    assert cells[:2] == ["run-a", "finished"] and "6 / 6" in cells
    browser.find_element(By.LINK_TEXT, "run-a").click()
    wait.until(lambda d: len(rows(d)) == 6)


def test_sweep_page_shows_the_paper_table_and_a_plot(browser: Any, tmp_path: Path) -> None:
    server = make_server([make_sweep(tmp_path / "sweeps" / "s1")], "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/sweep?sweep=0/")
        wait = waiting(browser, 10)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#paper tbody tr"))
        done, pending = browser.find_elements(By.CSS_SELECTOR, "#paper tbody tr")
        heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#paper thead th")]
        texts = [td.text for td in done.find_elements(By.TAG_NAME, "td")]
        cells = dict(zip(heads, texts, strict=True))
        assert cells["run"] == "setting=1" and cells["val acc"] == "90.00%"
        sweep_heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#sweep th")]
        assert sweep_heads.count("setting") == 1  # the axis, not also the run's column
        assert cells["params"] == "20,000" and cells["test acc"] == "—"
        assert pending.find_elements(By.TAG_NAME, "td")[-1].text == "—"
        plot = browser.find_element(By.CSS_SELECTOR, "#sweep-plots svg")
        assert "accuracy vs search energy" in plot.text
        (dot,) = plot.find_elements(By.TAG_NAME, "circle")  # one run has a result
        width = float(plot.get_attribute("width"))
        assert 0 < float(dot.get_attribute("cx")) < width  # inside the plot, not off it
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        server.shutdown()
        server.server_close()


def test_a_long_run_shows_its_latest_page_and_follows_it(browser: Any, tmp_path: Path) -> None:
    """250 iterations: the table shows the latest page (of 100) and keeps following it as
    iterations commit; earlier / all / latest move through them; a click on a plot point
    of an earlier iteration turns to its page. The plots keep every iteration."""
    records = [record(0, None, 0.3)] + [record(i, i - 1, 0.3 + i / 1000) for i in range(1, 250)]
    run_dir = make_run(tmp_path / "runs" / "long", records)
    server = make_server([run_dir.parent], "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    first = lambda d: rows(d)[0].get_attribute("data-iteration")  # noqa: E731
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/run?run=0/long")
        wait = waiting(browser, 10)
        wait.until(lambda d: len(rows(d)) == 50)
        assert first(browser) == "200"
        assert "201–250 of 250" in browser.find_element(By.ID, "pager").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#plots svg:last-child circle")) == 250
        with RunStore.open(run_dir, writer=True) as store:
            store.record_iteration(record(250, 249, 0.9))
        wait.until(lambda d: rows(d)[-1].get_attribute("data-iteration") == "250")
        assert len(rows(browser)) == 51 and first(browser) == "200"  # 201–251: the last page
        browser.find_element(By.ID, "page-earlier").click()
        wait.until(lambda d: first(d) == "100")
        browser.find_element(By.ID, "page-all").click()
        wait.until(lambda d: len(rows(d)) == 251)
        browser.find_element(By.ID, "page-latest").click()
        wait.until(lambda d: first(d) == "200")
        dot = browser.find_elements(By.CSS_SELECTOR, "#plots svg:last-child circle")[10]
        browser.execute_script(  # the points overlap at 250: a click meant for this one
            "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", dot
        )
        wait.until(lambda d: first(d) == "0")
        wait.until(lambda d: "selected" in (rows(d)[10].get_attribute("class") or ""))
        # 502 accuracy points: no dot each; the pointer picks the nearest, a click selects it
        (hit,) = browser.find_elements(By.CSS_SELECTOR, "#plots svg .hit")
        ActionChains(browser).move_to_element(hit).perform()
        pick = browser.find_element(By.CSS_SELECTOR, "#plots .pick")
        wait.until(lambda d: pick.text.startswith("#"))
        picked = pick.text.split()[0][1:]
        hit.click()
        wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, f'tr.selected[data-iteration="{picked}"]')
        )
        assert 80 < int(picked) < 170  # the middle of the plot
    finally:
        server.shutdown()
        server.server_close()
