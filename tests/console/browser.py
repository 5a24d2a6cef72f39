"""The console's real-browser harness (tests/console/test_browser.py, issue 19).

- `ConsoleServer`: a real `beatd run --with-worker` serving the API and the console at
  `--api-addr` on a free port, on a SQLite file seeded with `SEEDED` runtime entries, a token
  file with a read and a write token, and a schedule file whose entries the tests steer.
- `Browser`: Debian's chromium through its chromedriver (`/usr/bin/chromium`,
  `/usr/bin/chromedriver`: selenium is handed both, so Selenium Manager never runs and nothing
  is fetched), headless, with the performance log on so a test can list every request made.
- `OtherOrigin`: a page server on another local port, the "other site" of the CSRF tests.
- `unnamed_controls`: the controls of a page a screen reader could not name.

The seeded file is prepared once per beatd source tree (a cache under the temp directory,
keyed by a hash of beatd's code) and copied for each server: writing 100,000 entries through
`Client.add_many` takes tens of seconds on a loaded 2-core machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beatd.http.tokens import Scope, new_token
from tests.redis_server import free_port
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SEEDED = 100_000
SEED_CRON = "0 3 1 1 *"  # once a year: the seeded entries never run during a test

SCHEDULE = """\
imports: [tests.worker_tasks]
entries:
  adder:
    task: tests.worker_tasks.add
    every: 1d
    args: ["{out}", 2, 3]
  doomed:
    task: tests.worker_tasks.always_fails
    every: 1d
    args: ["{out}"]
"""


def seeded_name(number: int) -> str:
    return f"tenant-{number:06d}"


def seed_definitions() -> dict[str, dict[str, Any]]:
    return {
        seeded_name(i): {
            "task": "tests.worker_tasks.add",
            "cron": SEED_CRON,
            "queue": f"q{i % 4}",
            "args": ["/dev/null", i, 1],
        }
        for i in range(SEEDED)
    }


def _code_key() -> str:
    digest = hashlib.sha256(f"{SEEDED} {SEED_CRON} v1".encode())
    for path in sorted((REPO / "beatd").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def seeded_database(target: Path) -> Path:
    """`target`, a copy of a SQLite file holding the `SEEDED` runtime entries."""
    cache = Path(tempfile.gettempdir()) / "beatd-console-seed"
    cache.mkdir(exist_ok=True)
    prepared = cache / f"{_code_key()}.db"
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the locked and the lowest sets run side by side
        if not prepared.exists():
            _prepare(prepared)
    shutil.copyfile(prepared, target)
    return target


def _prepare(prepared: Path) -> None:
    from beatd import Client

    making = prepared.with_suffix(".making")
    making.unlink(missing_ok=True)
    with Client(f"sqlite:///{making}", by="seed", timeout=300) as client:
        client.add_many(seed_definitions())
    for stale in prepared.parent.glob("*.db"):
        stale.unlink()
    making.rename(prepared)


class ConsoleServer:
    """`beatd run --with-worker` serving the API and the console on 127.0.0.1:PORT."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.dir = directory
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.database = seeded_database(directory / "beatd.db")
        self.broker = f"sqlite:///{self.database}"
        self.out = directory / "out"
        self.writer = new_token("writer", Scope.WRITE)
        self.reader = new_token("reader", Scope.READ)
        tokens = directory / "api-tokens"
        tokens.write_text(f"{self.writer.line}\n{self.reader.line}\n")
        tokens.chmod(0o600)
        (directory / "schedules").mkdir()
        (directory / "schedules" / "s.yaml").write_text(SCHEDULE.format(out=self.out))
        self.log = directory / "run.log"
        argv = [
            *(sys.executable, "-m", "beatd", "run", "--with-worker", "-A", "tests.worker_tasks"),
            *("-s", str(directory / "schedules"), "--broker", self.broker, "--no-watch"),
            *("--api-addr", f"127.0.0.1:{self.port}", "--api-tokens", str(tokens)),
            *("--node", "console", "--lease-ttl", "20s", "--metrics-addr", "off"),
            *("-c", "1", "--pool", "thread", *extra),
        ]
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=directory,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def url(self, path: str) -> str:
        return self.origin + path

    def wait_ready(self, timeout: float = 240.0) -> None:
        """Until the API answers and the daemon leads with every seeded entry read."""

        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"beatd run exited:\n{self.log.read_text()}")
            try:
                nodes = self.api("GET", "/v1/nodes")["nodes"]
            except OSError:
                return False
            if not any(n["node"] == "console" and n["role"] == "leader" for n in nodes):
                return False
            try:  # 503 while the node's entry index is being built
                return bool(self.api("GET", "/v1/entry-index?limit=1")["total"] == SEEDED + 2)
            except OSError:
                return False

        wait_for(ready, timeout=timeout, interval=0.2, what="leading, the entry index built")

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """The API's JSON answer (HTTPError for a non-2xx one), with the write token."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path), data=data, method=method)
        request.add_header("Authorization", f"Bearer {token or self.writer.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read() or b"null")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`beatd ARGS --broker URL` as a separate process, as an operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "beatd", *args, "--broker", self.broker],
            capture_output=True,
            text=True,
            timeout=240,  # `beatd status NAME` builds every runtime entry (20-60 s for 100,000)
            cwd=self.dir,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,
        )

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def chrome_options(performance_log: bool = True) -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",  # no update checks, no safe browsing lists
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        "--metrics-recording-only",
    ):
        options.add_argument(argument)
    if performance_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return options


def start_chromium(performance_log: bool = True) -> Any:
    """A headless chromium driven by Debian's chromedriver; never Selenium Manager."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # were Selenium Manager ever asked, it must not download
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER), options=chrome_options(performance_log)
    )
    driver.set_page_load_timeout(60)
    return driver


class Browser:
    """One chromium for a test module; keeps every request URL its performance log showed."""

    def __init__(self) -> None:
        self.driver = start_chromium()
        self.requested: list[str] = []

    def requests(self) -> list[str]:
        """Every URL a request was sent for so far (the log is drained into `requested`)."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requested.append(message["params"]["request"]["url"])
        return list(self.requested)

    def color_scheme(self, value: str) -> None:
        self.driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"media": "", "features": [{"name": "prefers-color-scheme", "value": value}]},
        )

    def close(self) -> None:
        self.driver.quit()


CONTROLS = "a[href], button, input:not([type=hidden]), select, textarea"


def unnamed_controls(driver: Any) -> list[str]:
    """The controls (links, buttons, inputs, selects, text areas) with no accessible name, each
    as its outer HTML's start; an empty list when every control has one."""
    from selenium.webdriver.common.by import By

    missing = []
    for element in driver.find_elements(By.CSS_SELECTOR, CONTROLS):
        if not (element.accessible_name or "").strip():
            html = element.get_attribute("outerHTML") or element.tag_name
            missing.append(html[:120])
    return missing


class OtherOrigin:
    """Serves given HTML pages at http://127.0.0.1:OTHER_PORT/NAME: another origin than the
    console's, as an attacker's page would be."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path.lstrip("/"), "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def page(self, name: str, html: str) -> str:
        self.pages[name] = html
        return f"{self.origin}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def api_status(server: ConsoleServer, method: str, path: str, token: str) -> int:
    try:
        server.api(method, path, {} if method != "GET" else None, token=token)
    except urllib.error.HTTPError as error:
        return error.code
    return 200


def iter_requests(urls: list[str]) -> Iterator[str]:
    """The request URLs that fetched something over the network (not data: or about:)."""
    for url in urls:
        if not url.startswith(("data:", "about:", "blob:")):
            yield url
