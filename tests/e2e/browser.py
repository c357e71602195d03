"""A real headless Chromium (Debian's `chromium`) driven through Playwright, for the browser tests.

Playwright only drives the system executable: `playwright install` (its own browser download) is never
needed. Screenshots land in one folder per test (`.cache/browser-shots/<test>/`) to look at afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SHOTS_ROOT = ROOT / ".cache" / "browser-shots"
# Flags that keep Chromium quiet and working in a container without a GPU, a sandbox or a network.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
DEFAULT_TIMEOUT_MS = 60_000


def chromium_executable() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: `make test` installs the Debian package (make apt-deps)")
    return found


def label_studio_session_cookies(url: str, email: str, password: str) -> dict[str, str]:
    """Log in through Label Studio's own form: the `sessionid` and `csrftoken` cookies of a user."""
    session = requests.Session()
    session.get(f"{url}/user/login/", timeout=30).raise_for_status()
    answer = session.post(
        f"{url}/user/login/",
        data={"email": email, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{url}/user/login/"},
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code == 302 and "sessionid" in session.cookies, f"login failed: {answer.status_code}"
    return {name: session.cookies[name] for name in ("sessionid", "csrftoken")}


class BrowserDriver:
    """One browser context (a fresh profile) and one page, with the few steps the tests need."""

    def __init__(self, context: BrowserContext, shots_dir: Path) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.page.set_default_timeout(DEFAULT_TIMEOUT_MS)
        self.shots_dir = shots_dir
        self.console_errors: list[str] = []
        self.page.on("console", self._record_console)
        self.page.on("pageerror", lambda error: self.console_errors.append(f"pageerror: {error}"))

    def _record_console(self, message) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def set_cookies(self, url: str, cookies: dict[str, str]) -> None:
        self.context.add_cookies(
            [{"name": name, "value": value, "url": url} for name, value in cookies.items()]
        )

    def login_label_studio(self, url: str, email: str, password: str) -> None:
        self.set_cookies(url, label_studio_session_cookies(url, email, password))

    def set_local_storage(self, key: str, value: str) -> None:
        """Applies to every page loaded afterwards, before the page's own scripts run."""
        self.context.add_init_script(f"window.localStorage.setItem({key!r}, {value!r});")

    def goto(self, url: str, wait_for: str | None = None) -> None:
        self.page.goto(url)
        if wait_for:
            self.page.wait_for_selector(wait_for)

    def click(self, selector: str) -> None:
        self.page.locator(selector).first.click()

    def click_at(self, selector: str, fx: float, fy: float) -> tuple[float, float]:
        """Click the element at a fraction of its box (like a user's mouse); returns the page point."""
        box = self.page.locator(selector).first.bounding_box()
        assert box is not None, f"{selector} is not visible"
        x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
        self.page.mouse.click(x, y)
        return x, y

    def screenshot(self, name: str, full_page: bool = False) -> Path:
        self.shots_dir.mkdir(parents=True, exist_ok=True)
        path = self.shots_dir / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable(), headless=True, args=CHROMIUM_FLAGS
        )  # Playwright gives every launch a fresh temporary --user-data-dir
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def browser_page(
    shots_dir: Path,
    *,
    viewport: tuple[int, int] = (1400, 900),
    color_scheme: Literal["light", "dark"] = "light",
    http_credentials: tuple[str, str] | None = None,
    browser: Browser | None = None,
) -> Iterator[BrowserDriver]:
    """A page in a fresh context; starts its own Chromium unless `browser` is given."""
    with chromium() if browser is None else _given(browser) as running:
        context = running.new_context(
            viewport={"width": viewport[0], "height": viewport[1]},
            color_scheme=color_scheme,
            http_credentials={"username": http_credentials[0], "password": http_credentials[1]}
            if http_credentials
            else None,
        )
        try:
            yield BrowserDriver(context, shots_dir)
        finally:
            context.close()


@contextmanager
def _given(browser: Browser) -> Iterator[Browser]:
    yield browser


def shots_dir_for(request: pytest.FixtureRequest) -> Path:
    """`.cache/browser-shots/<test name>/`, emptied at the start of the test."""
    folder = SHOTS_ROOT / request.node.name.replace("/", "_")
    shutil.rmtree(folder, ignore_errors=True)
    return folder
