"""Headless Debian Chromium driven by Playwright, for tests of the real page."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Flags that keep Chromium from reaching for the network on a closed machine.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DESKTOP, PHONE = (1280, 900), (390, 844)
# For a test that takes the `page` fixture below: run it at both widths.
BOTH_WIDTHS = pytest.mark.parametrize("page", [DESKTOP, PHONE], ids=["desktop", "phone"], indirect=True)


@contextmanager
def chromium_page(viewport=(1280, 900)):
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing; run_tests.sh installs it")
        pytest.skip(f"{CHROMIUM} is missing; run_tests.sh installs it (as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        try:
            yield page
        finally:
            browser.close()


@contextmanager
def ui_page(url: str, name: str, viewport=DESKTOP):
    """The page open on `url` at `viewport`; afterwards a screenshot `last_<name>` is kept and the page
    must have had no script errors. The body of the browser tests' `page` fixtures."""
    with chromium_page(viewport) as page:
        open_ui(page, url)
        try:
            yield page
        finally:
            save_artifact(page, f"last_{name}")
        assert page.errors == []


def open_ui(page, url: str) -> None:
    """Load the page and wait until its controls are live (the page keeps a heartbeat connection
    open, so "network idle" never comes)."""
    page.goto(url, wait_until="load")
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    page.wait_for_function("window.__gradio_mode__ !== undefined || document.querySelector('#txt2img_generate')")


def save_artifact(page, name: str, full_page: bool = True) -> Path:
    """A screenshot under tests/artifacts/, for a person to look at after a run: the whole page, or
    (full_page=False) what the window shows, toasts included (a full page leaves them out)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def data_dir_with_embedded_model(root: Path) -> Path:
    """A data folder for the server: any folder has the shipped model, nothing is linked into it."""
    root.mkdir(parents=True, exist_ok=True)
    return root


def set_number(page, elem_id: str, value) -> None:
    """Type into the number box of a slider or number field, and leave it, so Gradio takes the value."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def choose(page, elem_id: str, option: str) -> None:
    """Pick an option of a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.locator(f"ul[role=listbox] li[aria-label='{option}']").first.click()


def open_tab(page, elem_id: str) -> None:
    page.locator(f"#{elem_id}-button").click()


def toast_messages(page) -> list[str]:
    """The messages of the error/info toasts on show."""
    return [text.strip() for text in page.locator("[data-testid=toast-text]").all_inner_texts()]


def wait_for_toast(page, text: str, timeout: float = 30_000) -> str:
    """The first toast message containing `text`, once one shows."""
    page.wait_for_function(f"[...document.querySelectorAll('[data-testid=toast-text]')]"
                           f".some(t => t.innerText.includes({text!r}))", timeout=timeout)
    return next(message for message in toast_messages(page) if text in message)


def close_toasts(page) -> None:
    for button in page.locator("[data-testid=toast-close]").all():
        button.click()
    page.wait_for_function("!document.querySelector('[data-testid=toast-text]')")


def rect(page, selector: str) -> dict:
    """The element's box on the page (viewport coordinates), as getBoundingClientRect gives it."""
    return page.evaluate(f"""() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();
        return {{x: r.x, y: r.y, width: r.width, height: r.height, bottom: r.bottom, right: r.right}}; }}""")
