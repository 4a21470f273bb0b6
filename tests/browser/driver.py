"""Browser-test helpers: headless Chromium through Selenium, and the console's login form.

Used by the fake-desk tests here and by tests against a real softswitch:
``login(browser, base_url, agent_id, password)`` works on any console.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from softswitch.config import PROJECT_ROOT

CHROMIUM = Path(os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
WAIT_S = 10.0
SCREENSHOT_DIR = PROJECT_ROOT / "docs" / "screenshots"

T = TypeVar("T")


def start_chromium(width: int = 1440, height: int = 960) -> WebDriver:
    """Headless Chromium with bounded page-load and script timeouts."""
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--lang=fa-IR", "--no-first-run",
                     "--disable-extensions", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(10)
    return driver


def wait_until(browser: WebDriver, condition: Callable[[WebDriver], T], timeout: float = WAIT_S,
               message: str = "") -> T:
    # A page that re-renders between finding an element and reading it makes it stale: look again.
    return WebDriverWait(browser, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition, message)


def visible(browser: WebDriver, css: str, timeout: float = WAIT_S) -> WebElement:
    """The element matching ``css`` once it is displayed."""
    def shown(driver: WebDriver) -> WebElement | bool:
        for element in driver.find_elements(By.CSS_SELECTOR, css):
            if element.is_displayed():
                return element
        return False
    return wait_until(browser, shown, timeout, f"{css} not shown")  # type: ignore[return-value]


def attribute_is(browser: WebDriver, css: str, name: str, value: str, timeout: float = WAIT_S) -> WebElement:
    def matches(driver: WebDriver) -> WebElement | bool:
        try:
            element = driver.find_element(By.CSS_SELECTOR, css)
            return element if element.get_attribute(name) == value else False
        except StaleElementReferenceException:  # the page re-rendered it between find and read
            return False
    return wait_until(browser, matches, timeout, f"{css}[{name}] never became {value!r}")  # type: ignore[return-value]


def submit_login(browser: WebDriver, login_url: str, fields: dict[str, str], password: str,
                 choices: dict[str, str] | None = None) -> None:
    """Log in through a login form, any earlier session cookie dropped: ``fields`` typed into inputs by
    element id, ``choices`` picked in selects by value. AssertionError with the page's error if refused."""
    path = urlsplit(login_url).path
    browser.get(login_url)
    browser.delete_all_cookies()
    browser.get(login_url)
    for element_id, value in (choices or {}).items():
        Select(browser.find_element(By.ID, element_id)).select_by_value(value)
    for element_id, value in fields.items():
        browser.find_element(By.ID, element_id).send_keys(value)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "login-submit").click()
    wait_until(browser, lambda d: path not in d.current_url or d.find_elements(By.ID, "login-error"))
    if path in browser.current_url:
        raise AssertionError(f"login at {path} refused: {browser.find_element(By.ID, 'login-error').text}")


def login(browser: WebDriver, base_url: str, agent_id: str, password: str) -> None:
    """Log in to the console and wait for the landing page's live stream."""
    submit_login(browser, base_url + "/console/login", {"agent-id": agent_id}, password)
    # The server sends the full state first on every stream, so once "open" no event can be missed.
    attribute_is(browser, "#connection", "data-state", "open")


def screenshot(browser: WebDriver, name: str) -> Path | None:
    """docs/screenshots/<name>.png of the whole page from its top, when SCREENSHOTS=1."""
    if os.environ.get("SCREENSHOTS") != "1":
        return None
    browser.execute_script("window.scrollTo(0, 0); document.activeElement && document.activeElement.blur();")
    width, height = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];")
    shot: dict[str, Any] = browser.execute_cdp_cmd("Page.captureScreenshot", {  # type: ignore[attr-defined]
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
