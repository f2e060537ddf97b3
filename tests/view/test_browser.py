"""The view as a person sees it: ``inversescope view`` started as a command on a workdir with
runs of the three methods, every page loaded in headless Debian chromium (through Selenium and
chromium-driver), checked for what is on screen and for JavaScript console errors. The server's
process group is killed on every path.

Needs ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``;
``.ci/run`` installs them when absent)."""

import shutil

import polars as pl
import pytest
from view_server import running_view

import inversescope
from inversescope.view.rows import visible

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, DRIVER) if shutil.which(p) is None]
    assert not missing, f"{missing} missing: apt-get install -y chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,900",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # no driver download
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def served(methods_workdir):
    with running_view(str(methods_workdir)) as (_, url):
        yield url.rstrip("/")


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_page(driver, url: str):
    from selenium.webdriver.common.by import By

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(url)
    body = driver.find_element(By.TAG_NAME, "body")
    assert "Traceback" not in body.text
    return body


def shown(driver, css: str):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    assert found and all(e.is_displayed() for e in found), css
    return found


def test_every_page_shows_its_content_without_console_errors(browser, served, methods_workdir):
    from selenium.webdriver.common.by import By

    runs = inversescope.runs(methods_workdir)
    key = runs.filter(pl.col("method") == "inversescope")["key"][0]
    run = inversescope.open(methods_workdir, key=key)
    pages = {}

    body = open_page(browser, served + "/")
    assert "Runs in" in body.text and "ioi-tiny" in body.text
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")) == runs.height
    pages["runs"] = console_errors(browser)

    body = open_page(browser, f"{served}/run/{key}")
    maps = shown(browser, "svg.heatmap")
    assert len(maps) == len(run.features) + 1
    assert {
        c.get_attribute("data-site") for c in maps[0].find_elements(By.CSS_SELECTOR, "g.cell")
    } == set(run.sites)
    for site in run.sites:
        assert site in body.text  # the results table names every site
    pages["overview"] = console_errors(browser)

    body = open_page(browser, f"{served}/run/{key}/site/L1H0")
    assert "Site L1H0" in body.text
    shown(browser, "svg.hist .eps-line")
    assert f"ε = {run.epsilon:g}" in browser.find_element(By.CSS_SELECTOR, "svg.hist").text
    shown(browser, "mark.read")
    texts = [t for t in run.samples("L1H0")["text"] if t and t.isprintable() and "  " not in t]
    assert texts, "no printable sample at L1H0"
    seen = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "table.samples td.text")}
    assert visible(texts[0]).strip() in seen
    pages["site"] = console_errors(browser)

    body = open_page(browser, f"{served}/run/{key}/feature/object")
    shown(browser, "svg.layers")
    assert "Feature object" in body.text and "Best sites" in body.text
    pages["feature"] = console_errors(browser)

    open_page(browser, f"{served}/run/{key}/methods?site=L1H0&example=1")
    methods = shown(browser, "section.method")
    assert [m.get_attribute("data-method") for m in methods] == [
        "inversescope",
        "inversionview",
        "prior",
    ]
    pages["methods"] = console_errors(browser)

    body = open_page(browser, f"{served}/run/{key}/search?site=L0H1&accepted=any")
    assert "matches in site L0H1" in body.text
    assert browser.find_elements(By.CSS_SELECTOR, "table.samples tbody tr")
    pages["search"] = console_errors(browser)

    body = open_page(browser, f"{served}/run/{key}/site/L9H9")
    assert "Unknown site" in body.text and "was not sampled" in body.text
    pages["error"] = [e for e in console_errors(browser) if "404" not in e]  # its own status

    assert pages == {name: [] for name in pages}


def test_a_person_compares_two_runs_and_inverts_a_prompt(browser, served, methods_workdir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    open_page(browser, served + "/")
    boxes = browser.find_elements(By.CSS_SELECTOR, "input[name=run]")
    boxes[0].click()
    boxes[1].click()
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(browser, 60).until(ec.url_contains("/compare?"))
    assert len(shown(browser, "svg.heatmap")) == 2
    assert console_errors(browser) == []

    key = inversescope.runs(methods_workdir).filter(pl.col("method") == "inversescope")["key"][0]
    open_page(browser, f"{served}/run/{key}/invert")
    prompt = "When Mary and John went to the store, John gave a drink to"
    browser.find_element(By.NAME, "prompt").send_keys(prompt)
    Select(browser.find_element(By.NAME, "site")).select_by_visible_text("L1H0")
    n = browser.find_element(By.NAME, "n")
    n.clear()
    n.send_keys("8")
    browser.find_element(By.CSS_SELECTOR, "form.search button").click()
    WebDriverWait(browser, 180).until(
        ec.text_to_be_present_in_element((By.TAG_NAME, "main"), "sampled in")
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.samples tbody tr")) == 8
    assert "subject John" in browser.find_element(By.CSS_SELECTOR, "p.labels").text
    assert console_errors(browser) == []
