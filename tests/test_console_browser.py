"""The operator console in a real browser: Playwright driving the OS's chromium
(headless) against a real stack through the real edge.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``
(Debian's package, installed by .ci/run). A missing chromium is a failure.
Every page visited is saved as a PNG in ``$PLAB_SCREENSHOTS`` (else a temp dir,
printed at the end).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import RAISED_LIMITS, Client, admin_of, create_user, start_stack, stop_stack
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COOKIE = "__Host-plab_console"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def shots() -> Path:
    directory = Path(
        os.environ.get("PLAB_SCREENSHOTS") or tempfile.mkdtemp(prefix="plab-console-shots-")
    )
    directory.mkdir(parents=True, exist_ok=True)
    yield directory
    print(f"\nconsole screenshots: {directory}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=ARGS, timeout=TIMEOUT_MS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def stack():
    stack = start_stack(**RAISED_LIMITS, console_rate=1000, console_burst=1000)
    yield stack
    stop_stack(stack)


def new_context(browser: Browser, **kwargs) -> BrowserContext:
    context = browser.new_context(ignore_https_errors=True, **kwargs)
    context.set_default_timeout(TIMEOUT_MS)
    return context


def shoot(page: Page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def sign_in(page: Page, stack, name: str, password: str) -> None:
    """With the keyboard only: type, Tab, type, Enter."""
    page.goto(stack.url + "/console/login")
    page.locator("#name").focus()
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/keys")


@contextlib.contextmanager
def admin_session(browser: Browser, stack, **kwargs) -> Iterator[tuple[BrowserContext, Page]]:
    """A fresh browser context (``kwargs`` as for ``new_context``) with one page
    signed in as the admin; the context is closed after."""
    admin = admin_of(stack)
    context = new_context(browser, **kwargs)
    try:
        page = context.new_page()
        sign_in(page, stack, admin.name, admin.password)
        yield context, page
    finally:
        context.close()


def keys_page_with_cookie(stack, session_id: str) -> requests.Response:
    """GET /console/keys outside the browser with ``session_id`` as the session
    cookie, redirects not followed: 303 (to the login) when that session is not live."""
    return requests.get(
        stack.url + "/console/keys",
        cookies={COOKIE: session_id},
        verify=str(stack.tls_cert),
        allow_redirects=False,
        timeout=30,
    )


def version_of(page: Page) -> str:
    return page.locator("#version").inner_text().strip()


def test_operator_flow(browser, stack, shots):
    admin = admin_of(stack)
    context = new_context(browser)
    page = context.new_page()
    page.goto(stack.url + "/console/")
    assert page.url.endswith("/console/login")
    shoot(page, shots, "01-login")
    sign_in(page, stack, admin.name, admin.password)
    shoot(page, shots, "02-keys")

    # create a user; the password is shown once and works
    page.click("text=Users")
    name = f"op{secrets.token_hex(4)}"
    page.fill("#user-name", name)
    page.select_option("#user-role", "writer")
    page.fill("#user-prefixes", "app-")
    page.click("text=Create user")
    password = page.locator("#password").inner_text().strip()
    # the console's one script (it carries the response's CSP nonce) ran: it shows
    # the copy button it wires up (waited for: the script runs after the page loads,
    # and is_visible() alone does not wait; a missing button times out and fails)
    page.locator("#copy").wait_for(state="visible", timeout=15_000)
    shoot(page, shots, "03-password-once")
    created = Client(stack, name, password)
    assert created.put("/v1/kv/app-x", data=b"1").status_code in (200, 201)
    page.click("text=Done")
    assert password not in page.content()
    shoot(page, shots, "04-user")

    # write a key, edit it, then a stale edit from a second tab is refused
    key = f"k{secrets.token_hex(5)}"
    page.click("text=Keys")
    page.fill("#new-key", key)
    page.fill("#new-value", "first value")
    page.click("button:text('Create')")
    page.wait_for_url(f"**/console/kv/{key}")
    assert page.locator("#value").inner_text() == "first value"
    stale_tab = context.new_page()
    stale_tab.goto(page.url)
    page.fill("#edit-value", "second value")
    page.click("text=Save (only if")
    assert page.locator("#value").inner_text() == "second value"
    shoot(page, shots, "05-key")
    stale_tab.fill("#edit-value", "lost update")
    stale_tab.click("text=Save (only if")
    assert "Stale edit refused" in stale_tab.locator(".flash").inner_text()
    assert stale_tab.locator("#value").inner_text() == "second value"
    assert stale_tab.locator("#edit-value").input_value() == "lost update"  # draft kept
    shoot(stale_tab, shots, "06-stale-edit-refused")
    stale_tab.close()
    assert admin.get(f"/ops/read/{key}").json()["value"] == "second value"

    # delete with confirmation
    page.click("text=Delete this key")
    shoot(page, shots, "07-confirm-delete")
    page.click(f"text=Yes, delete {key}")
    page.wait_for_url("**/console/keys")
    assert admin.get(f"/ops/read/{key}").status_code == 404

    # the audit log, and its verification
    page.click("text=Audit")
    shoot(page, shots, "08-audit")
    page.click("#verify")
    assert page.locator("#verdict").inner_text() == "The log verifies."
    shoot(page, shots, "09-audit-verified")
    entries = admin.get("/admin/audit", params={"actor": admin.name, "limit": 1000}).json()
    actions = {(e["action"], e["target"]) for e in entries["entries"]}
    assert {("user.create", name), ("kv.put", key), ("kv.delete", key)} <= actions

    # backups: create one, run a drill; the status page
    page.click("text=Backups")
    page.click("#backup-now")
    assert "Backup written" in page.locator(".flash").inner_text()
    shoot(page, shots, "10-backups")
    page.click("#drill")
    assert page.locator("#verdict").inner_text() == "PASS"
    shoot(page, shots, "11-drill")
    page.click("text=Status")
    assert page.locator("#ready").inner_text().startswith("Ready")
    shoot(page, shots, "12-status")

    # sign out: the session is gone server-side too
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)["value"]
    page.click("text=Sign out")
    assert "You are signed out." in page.content()
    page.goto(stack.url + "/console/keys")
    assert page.url.endswith("/console/login")
    replay = keys_page_with_cookie(stack, cookie)
    assert replay.status_code == 303
    context.close()


def test_readable_on_a_phone(browser, stack, shots):
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True}
    with admin_session(browser, stack, **phone) as (_, page):
        page.click("text=Users")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
        shoot(page, shots, "13-phone-users")


def test_cookie_flags_as_the_browser_sees_them(browser, stack):
    with admin_session(browser, stack) as (context, page):
        [cookie] = [c for c in context.cookies() if c["name"] == COOKIE]
        assert cookie["secure"] and cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict" and cookie["path"] == "/"
        assert not cookie["domain"].startswith(".")  # host-only, as __Host- demands
        assert COOKIE not in page.evaluate("document.cookie")


def test_a_cross_site_form_post_is_refused(browser, stack):
    admin = admin_of(stack)
    with admin_session(browser, stack) as (context, page):
        key = f"evil{secrets.token_hex(4)}"
        # a page on another site (served by the test, never over the network) that
        # posts a form to the console on load
        attacker = (
            f'<form id="f" method="post" action="{stack.url}/console/keys">'
            f'<input name="key" value="{key}"><input name="value" value="pwned">'
            '<input name="csrf" value="guess"></form>'
            "<script>document.getElementById('f').submit()</script>"
        )
        context.route(
            "https://attacker.invalid/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body=attacker),
        )
        with page.expect_response(lambda r: r.url.endswith("/console/keys")) as answer:
            page.goto("https://attacker.invalid/")
        assert answer.value.status in (401, 403)
        assert admin.get(f"/ops/read/{key}").status_code == 404
        # the session itself survives and still works
        page.goto(stack.url + "/console/keys")
        assert page.url.endswith("/console/keys")


def test_an_injected_script_is_text_and_csp_blocks_inline_code(browser, stack, shots):
    admin = admin_of(stack)
    key = f"xss{secrets.token_hex(4)}"
    payload = '<script>window.__pwned=1;alert("x")</script><img src=x onerror="window.__pwned=2">'
    assert admin.put(f"/ops/v1/kv/{key}", data=payload.encode()).status_code == 201
    context = new_context(browser)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    console_messages: list[str] = []
    page.on("console", lambda message: console_messages.append(message.text))
    sign_in(page, stack, admin.name, admin.password)
    page.goto(f"{stack.url}/console/kv/{key}")
    assert page.locator("#value").inner_text() == payload
    shoot(page, shots, "14-injected-script-as-text")
    # had the escaping failed, the CSP (a nonce per response, no 'unsafe-inline')
    # would still refuse inline code: inject some and watch it not run
    page.evaluate(
        """() => {
        window.__violations = 0;
        document.addEventListener('securitypolicyviolation', () => window.__violations++);
        const box = document.createElement('div');
        box.innerHTML = '<img src="/console/static/none.png" onerror="window.__pwned=3">';
        document.body.appendChild(box);
        const inline = document.createElement('script');
        inline.textContent = 'window.__pwned = 4';
        document.body.appendChild(inline);
    }"""
    )
    page.wait_for_function("window.__violations >= 2")
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    assert not any("pwned" in text for text in console_messages)
    context.close()


def test_a_planted_session_cookie_is_not_adopted(browser, stack):
    admin = admin_of(stack)
    user = create_user(admin, "admin", ["*"])
    # the attacker's own valid session, planted in the victim's browser
    with requests.Session() as attacker:
        attacker.trust_env = False
        attacker.verify = str(stack.tls_cert)
        form = attacker.get(stack.url + "/console/login", timeout=30).text
        token = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        attacker.post(
            stack.url + "/console/login",
            data={"csrf": token, "name": user.name, "password": user.password},
            timeout=30,
        )
        planted = attacker.cookies.get(COOKIE)
    assert planted
    context = new_context(browser)
    context.add_cookies(
        [
            {
                "name": COOKIE,
                "value": planted,
                "url": stack.url,
                "secure": True,
                "httpOnly": True,
                "sameSite": "Strict",
            }
        ]
    )
    page = context.new_page()
    sign_in(page, stack, admin.name, admin.password)
    [cookie] = [c for c in context.cookies() if c["name"] == COOKIE]
    assert cookie["value"] != planted
    assert page.locator(".who").inner_text() == admin.name
    gone = keys_page_with_cookie(stack, planted)
    assert gone.status_code == 303  # the planted id died at the login
    context.close()


def test_disable_and_rotate_end_the_browser_session(browser, stack):
    admin = admin_of(stack)
    user = create_user(admin, "admin", ["*"])
    context = new_context(browser)
    page = context.new_page()
    sign_in(page, stack, user.name, user.password)
    assert admin.post(f"/admin/users/{user.name}/disable").status_code == 200
    page.reload()
    assert page.url.endswith("/console/login")
    assert admin.post(f"/admin/users/{user.name}/enable").status_code == 200
    sign_in(page, stack, user.name, user.password)
    rotated = admin.post(f"/admin/users/{user.name}/rotate")
    assert rotated.status_code == 200
    page.reload()
    assert page.url.endswith("/console/login")
    sign_in(page, stack, user.name, rotated.json()["password"])
    assert page.locator(".who").inner_text() == user.name
    context.close()


def test_idle_timeout(browser, stack_factory):
    stack = stack_factory(extra_env={"PLAB_CONSOLE_IDLE": "8", "PLAB_CONSOLE_LIFETIME": "600"})
    with admin_session(browser, stack) as (_, page):
        time.sleep(12)
        page.goto(stack.url + "/console/users")
        assert page.url.endswith("/console/login")
