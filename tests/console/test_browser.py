"""The console in Debian's chromium against a real `beatd run --with-worker` with 100,000
seeded entries on SQLite (issue 19, "Tested in a real browser"). One server and one browser
for the module; the tests run in the order written (sign in first, the request log last)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait

from tests.console.browser import (
    SEEDED,
    Browser,
    ConsoleServer,
    OtherOrigin,
    iter_requests,
    seeded_name,
    unnamed_controls,
)
from tests.waiting import wait_for

# real processes (slow), and in the lowest set too: the lowest selenium must drive chromium
pytestmark = pytest.mark.slow  # the lowest set drives selenium 4.0 in test_screenshots


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    running = ConsoleServer(tmp_path_factory.mktemp("console"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = Browser()
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture(scope="module")
def other() -> Iterator[OtherOrigin]:
    site = OtherOrigin()
    try:
        yield site
    finally:
        site.close()


def find(browser: Browser, css: str) -> Any:
    return browser.driver.find_element(By.CSS_SELECTOR, css)


def texts(browser: Browser, css: str) -> list[str]:
    return [e.text for e in browser.driver.find_elements(By.CSS_SELECTOR, css)]


def click_and_load(browser: Browser, element: Any) -> None:
    """Click a link or a form's button and wait for the page it leads to (reading right after
    a click may read the page the click left)."""
    page = browser.driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser.driver, 30).until(staleness_of(page))


def messages(browser: Browser) -> list[str]:
    return texts(browser, ".messages li")


def refusal(browser: Browser) -> str:
    return str(find(browser, ".refusal").text)


def sign_in(browser: Browser, server: ConsoleServer, token: str, page: str = "/ui/dead") -> None:
    browser.driver.get(server.url(page))
    field = find(browser, "#token")
    field.send_keys(token, Keys.ENTER)
    wait_for(
        lambda: (
            "/ui/signin" not in browser.driver.current_url
            and any("Signed in as" in t for t in texts(browser, ".who"))
        ),
        what="the sign-in to end on a signed-in page",  # not the old page, still loading
    )


def test_sign_in_with_a_token_lands_on_the_page_asked_for(
    server: ConsoleServer, browser: Browser
) -> None:
    driver = browser.driver
    driver.get(server.url("/ui/dead"))
    assert driver.current_url == server.url("/ui/signin?next=/ui/dead")
    sign_in(browser, server, server.writer.token)
    assert driver.current_url == server.url("/ui/dead")
    assert find(browser, ".who").text == "Signed in as writer (write)\nSign out"
    cookie = driver.get_cookie("beatd_session")
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")


def test_filter_the_entries_to_one_then_open_the_last_page(
    server: ConsoleServer, browser: Browser
) -> None:
    driver = browser.driver
    driver.get(server.url("/ui/entries"))
    wanted = seeded_name(SEEDED - 7)
    find(browser, "#f-name").send_keys(wanted, Keys.ENTER)
    WebDriverWait(driver, 30).until(lambda d: "name=" in d.current_url)
    assert texts(browser, "tbody th[scope=row]") == [wanted]
    assert find(browser, "#shown").text == "Entries 1–1 of 1."
    find(browser, "#f-name").clear()
    find(browser, "#f-name").send_keys(Keys.ENTER)
    WebDriverWait(driver, 30).until(lambda d: "name=&" in d.current_url)
    driver.find_element(By.LINK_TEXT, "Last page").click()
    WebDriverWait(driver, 30).until(lambda d: "offset=" in d.current_url)
    names = texts(browser, "tbody th[scope=row]")
    total = SEEDED + 2  # and the schedule file's two
    assert names[-1] == seeded_name(SEEDED - 1)
    assert find(browser, "#shown").text == (f"Entries {total - len(names) + 1}–{total} of {total}.")


def test_a_triggered_run_shows_its_outcome_in_the_history(
    server: ConsoleServer, browser: Browser
) -> None:
    driver = browser.driver
    driver.get(server.url("/ui/entries/adder"))
    click_and_load(browser, driver.find_element(By.XPATH, "//button[text()='Trigger a run now']"))
    [said] = messages(browser)
    run_id = re.fullmatch(r"run (adder@\S+) (\w+)(: .*)?", said)
    assert run_id, said

    def succeeded() -> bool:
        driver.get(server.url("/ui/entries/adder"))
        return "succeeded" in texts(browser, "#history-h ~ table tbody td span.status")

    wait_for(succeeded, timeout=30, interval=0.5, what="the run's outcome in the history")
    assert server.out.read_text().split()[0] == "sum=5"


def tab_to(browser: Browser, element_id: str, most: int = 80) -> None:
    """Press Tab until the element with `element_id` has the focus."""
    for _ in range(most):
        if browser.driver.switch_to.active_element.get_attribute("id") == element_id:
            return
        ActionChains(browser.driver).send_keys(Keys.TAB).perform()
    raise AssertionError(f"{most} presses of Tab never reached #{element_id}")


def test_pause_with_only_tab_and_enter_shows_on_the_page_and_in_beatd_status(
    server: ConsoleServer, browser: Browser
) -> None:
    driver = browser.driver
    driver.get(server.url("/ui/entries/adder"))
    tab_to(browser, "pause-reason")
    ActionChains(driver).send_keys("disk full on the reports host").perform()
    tab_to(browser, "pause-until")
    ActionChains(driver).send_keys("2h", Keys.ENTER).perform()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".pause-note"))
    [said] = messages(browser)
    assert re.fullmatch(r"paused adder until \S+: disk full on the reports host", said), said
    note = find(browser, ".pause-note").text
    assert note.startswith("Paused by writer since ")
    assert note.endswith(": disk full on the reports host")
    status = server.cli("status", "adder", "-s", str(server.dir / "schedules"))
    assert status.returncode == 0, status.stderr
    [line] = [li for li in status.stdout.splitlines() if li.startswith("paused ")]
    assert re.fullmatch(
        r"paused   adder: by writer, reason 'disk full on the reports host', since \S+Z, "
        r"until \S+Z",
        line,
    ), status.stdout

    def paused_rows() -> list[str]:
        driver.get(server.url("/ui/entries?paused=true"))
        return texts(browser, "tbody th[scope=row]")

    assert wait_for(paused_rows, timeout=30, interval=0.5, what="adder paused") == ["adder"]


def test_the_paused_entry_shows_on_the_overview(server: ConsoleServer, browser: Browser) -> None:
    def paused() -> list[str]:  # the index refreshes pauses in bulk, every few seconds
        browser.driver.get(server.url("/ui/"))
        heading = "//h3[starts-with(., 'Paused (')]"
        links = browser.driver.find_elements(By.XPATH, heading + "/following-sibling::ul[1]//a")
        return [link.text for link in links]

    assert wait_for(paused, timeout=30, interval=0.5, what="adder under Paused") == ["adder"]


def dead_letter_ids(server: ConsoleServer) -> list[str]:
    return [letter["id"] for letter in server.api("GET", "/v1/dead-letters")["dead_letters"]]


def test_retry_then_delete_a_dead_letter(server: ConsoleServer, browser: Browser) -> None:
    driver = browser.driver
    driver.get(server.url("/ui/entries/doomed"))
    driver.find_element(By.XPATH, "//button[text()='Trigger a run now']").click()
    [letter] = wait_for(lambda: dead_letter_ids(server), timeout=30, what="a dead letter")
    failures = server.out.read_text().count("fail ")
    driver.get(server.url("/ui/dead"))
    click_and_load(
        browser, driver.find_element(By.CSS_SELECTOR, f"button[aria-label='Retry {letter}']")
    )
    assert messages(browser) == [f"requeued dead letter {letter}"]
    wait_for(
        lambda: server.out.read_text().count("fail ") > failures and dead_letter_ids(server),
        timeout=30,
        what="the retried run to fail again and be dead-lettered",
    )
    driver.get(server.url("/ui/dead"))
    assert unnamed_controls(driver) == []  # a letter's own controls (the page check sees none)
    driver.find_element(By.CSS_SELECTOR, f"button[aria-label='Delete {letter}']").click()
    alert = WebDriverWait(driver, 10).until(lambda d: d.switch_to.alert)
    assert alert.text == f"Delete the dead letter {letter} for good?"
    alert.accept()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".messages"))
    assert messages(browser) == [f"deleted dead letter {letter}"]
    assert find(browser, "main p").text == "No dead letters."
    assert dead_letter_ids(server) == []


def test_an_action_with_a_read_token_is_refused_in_the_apis_words(
    server: ConsoleServer, browser: Browser
) -> None:
    driver = browser.driver
    driver.get(server.url("/ui/dead"))
    click_and_load(browser, driver.find_element(By.XPATH, "//button[text()='Sign out']"))
    sign_in(browser, server, server.reader.token, "/ui/entries/adder")
    audit_before = server.api("GET", "/v1/audit?entry=adder")["records"]
    trigger = "//button[text()='Trigger a run now']"
    click_and_load(browser, driver.find_element(By.XPATH, trigger))
    assert refusal(browser) == "token reader may only read; this request needs a write token"
    assert server.api("GET", "/v1/audit?entry=adder")["records"] == audit_before
    driver.get(server.url("/ui/dead"))
    click_and_load(browser, driver.find_element(By.XPATH, "//button[text()='Sign out']"))
    sign_in(browser, server, server.writer.token)


def test_a_form_posted_from_another_origin_is_refused(
    server: ConsoleServer, browser: Browser, other: OtherOrigin
) -> None:
    """Even with the session's own CSRF token (as if it leaked), a form on another origin's
    page is refused: its Origin is not the console's."""
    driver = browser.driver
    driver.get(server.url("/ui/entries/adder"))
    csrf = find(browser, "input[name=csrf]").get_attribute("value")
    audit_before = server.api("GET", "/v1/audit?entry=adder")["records"]
    page = other.page(
        "attack.html",
        "<!doctype html><title>Win a prize</title>"
        f'<form method="post" action="{server.url("/ui/trigger/adder")}">'
        f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">'
        "<button>Claim</button></form>",
    )
    driver.get(page)
    driver.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(server.origin))
    assert refusal(browser) == (
        f"the form came from {other.origin}, not from the console's own origin "
        f"{server.origin}: a page of another site cannot act here (behind a TLS proxy, see "
        "docs/api.md, Console sign-in)"
    )
    assert "(403)" in driver.title
    assert server.api("GET", "/v1/audit?entry=adder")["records"] == audit_before


def console_pages(server: ConsoleServer) -> list[str]:
    return [
        "/ui/",
        "/ui/entries",
        "/ui/entries/adder",
        f"/ui/entries/{seeded_name(1)}",
        f"/ui/edit/{seeded_name(1)}",
        "/ui/new-entry",
        "/ui/dead",
    ]


def test_every_control_of_every_page_has_an_accessible_name(
    server: ConsoleServer, browser: Browser
) -> None:
    unnamed = {}
    for page in console_pages(server):
        browser.driver.get(server.url(page))
        assert browser.driver.find_elements(By.TAG_NAME, "main"), page
        unnamed[page] = unnamed_controls(browser.driver)
    assert unnamed == {page: [] for page in console_pages(server)}


def test_the_accessible_name_check_finds_unnamed_controls(
    browser: Browser, other: OtherOrigin
) -> None:
    page = other.page(
        "unnamed.html",
        "<!doctype html><title>bad</title><main>"
        '<a href="/x"></a><button></button><input id="q"><select id="s"></select>'
        "<textarea></textarea><label>Fine <input id='ok'></label>"
        '<input type="hidden" name="h"></main>',
    )
    browser.driver.get(page)
    assert unnamed_controls(browser.driver) == [
        '<a href="/x"></a>',
        "<button></button>",
        '<input id="q">',
        '<select id="s"></select>',
        "<textarea></textarea>",
    ]


def background(browser: Browser) -> str:
    return str(browser.driver.execute_script("return getComputedStyle(document.body).background"))


def test_light_and_dark_follow_the_systems_setting(server: ConsoleServer, browser: Browser) -> None:
    browser.driver.get(server.url("/ui/dead"))
    try:
        browser.color_scheme("light")
        light = background(browser)
        browser.color_scheme("dark")
        dark = background(browser)
    finally:
        browser.color_scheme("")
    assert light != dark, light


def test_no_request_left_the_test_servers(
    server: ConsoleServer, browser: Browser, other: OtherOrigin
) -> None:
    """Last: the performance log of every page the module opened."""
    for page in console_pages(server):
        browser.driver.get(server.url(page))
    requested = list(iter_requests(browser.requests()))
    assert any(url == server.url("/ui/static/console.css") for url in requested)
    assert [u for u in requested if not u.startswith((server.origin, other.origin))] == []
