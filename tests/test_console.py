"""The operator console, Flask side, through the real edge with `requests`:
sign-in rules, CSRF, sessions bound to the user, headers, audit, the API's
headers unchanged, and PLAB_CONSOLE=off."""

from __future__ import annotations

import hashlib
import re
import secrets
import time

import pytest
import requests
from conftest import RAISED_LIMITS, Client, admin_of, create_user, start_stack, stop_stack

from productionlab.settings import ConfigError, Settings
from productionlab.store.layout import shard_of
from tests.layout_kit import item_of

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


class Console:
    """A browser-like client of /console/ (cookies kept, forms with their CSRF field)."""

    def __init__(self, stack, name: str, password: str):
        self.stack = stack
        self.name = name
        self.password = password
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = str(stack.tls_cert)

    def url(self, path: str) -> str:
        return self.stack.url + "/console" + path

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.http.get(self.url(path), **kwargs)

    def csrf(self, path: str = "/keys") -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        return CSRF_RE.search(page.text).group(1)

    def post(self, path: str, data: dict | None = None, csrf: str | None = None, **kwargs):
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("allow_redirects", False)
        body = {"csrf": self.csrf() if csrf is None else csrf, **(data or {})}
        return self.http.post(self.url(path), data=body, **kwargs)

    def login(self, password: str | None = None) -> requests.Response:
        page = self.get("/login")
        assert page.status_code == 200, page.text
        token = CSRF_RE.search(page.text).group(1)
        return self.http.post(
            self.url("/login"),
            data={"csrf": token, "name": self.name, "password": password or self.password},
            allow_redirects=False,
            timeout=30,
        )


def signed_in(stack, client: Client) -> Console:
    console = Console(stack, client.name, client.password)
    response = console.login()
    assert response.status_code == 303, response.text
    return console


@pytest.fixture(scope="module")
def stack():
    """This module's stack: the session one's raised limits, and the console's raised too."""
    stack = start_stack(**RAISED_LIMITS, console_rate=1000, console_burst=1000)
    yield stack
    stop_stack(stack)


@pytest.fixture
def console(stack, admin) -> Console:
    return signed_in(stack, create_user(admin, "admin", ["*"]))


def audit_actions(admin: Client, actor: str) -> list[str]:
    entries = admin.get("/admin/audit", params={"actor": actor, "limit": 1000}).json()["entries"]
    return [f"{e['action']} {e['target']}" for e in entries]


def test_login_sets_a_hardened_cookie_and_lands_on_keys(stack, admin):
    user = create_user(admin, "admin", ["*"])
    console = Console(stack, user.name, user.password)
    response = console.login()
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/console/keys")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-plab_console=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    assert "Domain" not in cookie
    page = console.get("/keys")
    assert page.status_code == 200 and "<h1>Keys</h1>" in page.text
    assert f"console.login {user.name}" in audit_actions(admin, user.name)


def test_wrong_password_and_non_admins_are_refused(stack, admin):
    user = create_user(admin, "admin", ["*"])
    refused = Console(stack, user.name, "not-" + user.password).login()
    assert refused.status_code == 401 and "__Host-plab_console=" not in refused.headers.get(
        "Set-Cookie", ""
    )
    writer = create_user(admin, "writer", ["*"])
    page = Console(stack, writer.name, writer.password).login()
    assert page.status_code == 403 and "admin users only" in page.text
    assert "__Host-plab_console=" not in page.headers.get("Set-Cookie", "")


def test_login_form_is_limited_per_user_and_per_address(stack_factory):
    """The failed-login guard per (address, user), then Flask-Limiter per address."""
    stack = stack_factory(
        admin_rate=1000,
        admin_burst=1000,
        console_rate=1000,
        console_burst=1000,
        extra_env={"PLAB_LOGIN_FAILURES": "3", "PLAB_AUTH_ADDRESS_RATE": "6/minute"},
    )
    admin = admin_of(stack)
    user, other = create_user(admin, "admin", ["*"]), create_user(admin, "admin", ["*"])
    console = Console(stack, user.name, user.password)
    statuses = [console.login(password="wrong").status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    guarded = console.login()  # the right password waits now: 3 failures for this pair
    assert guarded.status_code == 429 and "too many failed logins" in guarded.text
    assert int(guarded.headers["Retry-After"]) >= 1
    # another user from the same address is not locked out by that guard ...
    assert Console(stack, other.name, other.password).login().status_code == 303
    assert Console(stack, other.name, other.password).login().status_code == 303
    # ... but every attempt from this address counts against its route limit
    limited = Console(stack, other.name, other.password).login()
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


def test_login_form_without_its_token_is_refused(stack, admin):
    user = create_user(admin, "admin", ["*"])
    console = Console(stack, user.name, user.password)
    response = console.http.post(
        console.url("/login"),
        data={"name": user.name, "password": user.password, "csrf": "forged"},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 403
    assert "__Host-plab_console=" not in response.headers.get("Set-Cookie", "")


def test_state_changes_need_the_session_csrf_token(console, admin):
    key = f"k{secrets.token_hex(6)}"
    refused = console.post("/keys", {"key": key, "value": "x"}, csrf="not-the-token")
    assert refused.status_code == 403
    assert admin.get(f"/ops/read/{key}").status_code == 404


def test_cross_site_posts_are_refused_even_with_the_token(console, admin):
    key = f"k{secrets.token_hex(6)}"
    token = console.csrf()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = console.post("/keys", {"key": key, "value": "x"}, csrf=token, headers=headers)
        assert refused.status_code == 403, headers
    assert admin.get(f"/ops/read/{key}").status_code == 404
    same = console.post(
        "/keys",
        {"key": key, "value": "x"},
        csrf=token,
        headers={"Origin": console.stack.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status_code == 303
    assert admin.get(f"/ops/read/{key}").json()["value"] == "x"


def test_write_edit_stale_edit_ttl_delete(console, admin):
    key = f"k{secrets.token_hex(6)}"
    assert console.post("/keys", {"key": key, "value": "one"}).status_code == 303
    page = console.get(f"/kv/{key}")
    assert "one" in page.text and 'name="version" value="' in page.text
    version = re.search(r'name="version" value="(\d+)"', page.text).group(1)
    saved = console.post(f"/kv/{key}", {"value": "two", "version": version})
    assert saved.status_code == 303
    stale = console.post(f"/kv/{key}", {"value": "three", "version": version})
    assert stale.status_code == 409
    assert "Stale edit refused" in stale.text
    assert '<pre class="value" id="value">two</pre>' in stale.text  # what is there now
    assert ">three</textarea>" in stale.text  # the operator's draft is kept
    shown = console.get(f"/kv/{key}").text
    assert "Stale edit refused" not in shown
    assert admin.get(f"/ops/read/{key}").json()["value"] == "two"
    current = re.search(r'name="version" value="(\d+)"', shown).group(1)
    assert console.post(f"/kv/{key}/ttl", {"ttl": "3600", "version": current}).status_code == 303
    ttl = console.stack.redis_client().pttl(item_of(key))
    assert 3_000_000 < ttl <= 3_600_000
    latest = re.search(r'name="version" value="(\d+)"', console.get(f"/kv/{key}").text).group(1)
    confirm = console.get(f"/kv/{key}/delete")
    assert confirm.status_code == 200 and "Yes, delete" in confirm.text
    assert console.post(f"/kv/{key}/delete", {"version": latest}).status_code == 303
    assert admin.get(f"/ops/read/{key}").status_code == 404
    actions = audit_actions(admin, console.name)
    assert actions.count(f"kv.put {key}") >= 3 and f"kv.delete {key}" in actions


def test_binary_values_show_as_hex_and_base64(console, admin):
    key = f"k{secrets.token_hex(6)}"
    assert admin.put(f"/ops/v1/kv/{key}", data=b"\xff\x00\x01").status_code == 201
    page = console.get(f"/kv/{key}").text
    assert "ff 00 01" in page and "/wAB" in page


def test_values_are_escaped(console, admin):
    key = f"k{secrets.token_hex(6)}"
    admin.put(f"/ops/v1/kv/{key}", data=b"<script>alert(1)</script>")
    page = console.get(f"/kv/{key}").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


def test_user_admin_password_shown_once_and_sessions_revoked(stack, console, admin):
    name = f"u{secrets.token_hex(5)}"
    created = console.post("/users", {"name": name, "role": "admin", "prefixes": "*"})
    assert created.status_code == 200
    password = re.search(r'<code id="password">([^<]+)</code>', created.text).group(1)
    assert created.headers["Cache-Control"] == "no-store"
    assert password not in console.get(f"/users/{name}").text
    assert password not in console.get("/users").text
    other = Console(stack, name, password)
    assert other.login().status_code == 303
    assert other.get("/keys").status_code == 200
    # a rotation through the admin API ends the session at once
    assert admin.post(f"/admin/users/{name}/rotate").status_code == 200
    ended = other.get("/keys", allow_redirects=False)
    assert ended.status_code == 303 and ended.headers["Location"].endswith("/console/login")
    actions = audit_actions(admin, console.name)
    assert f"user.create {name}" in actions


def test_disable_demote_and_delete_end_sessions(stack, console, admin):
    for change in ("disable", "demote", "delete"):
        victim = create_user(admin, "admin", ["*"])
        session = signed_in(stack, victim)
        assert session.get("/keys").status_code == 200
        if change == "disable":
            assert console.post(f"/users/{victim.name}/disable").status_code == 303
        elif change == "demote":
            response = console.post(
                f"/users/{victim.name}/grants", {"role": "reader", "prefixes": "a"}
            )
            assert response.status_code == 303
        else:
            assert console.post(f"/users/{victim.name}/delete").status_code == 303
        assert session.get("/keys", allow_redirects=False).status_code == 303, change
        assert session.post("/keys", {"key": "x", "value": "y"}, csrf="x").status_code == 401


def test_an_admin_cannot_lock_themselves_out(console):
    for action in ("disable", "delete"):
        assert console.post(f"/users/{console.name}/{action}").status_code == 400
    refused = console.post(f"/users/{console.name}/grants", {"role": "reader", "prefixes": ""})
    assert refused.status_code == 400
    assert console.get("/keys").status_code == 200


def test_logout_revokes_the_session_server_side(console, admin):
    cookie = console.http.cookies.get("__Host-plab_console")
    assert console.post("/logout").status_code == 200
    replay = requests.get(
        console.url("/keys"),
        cookies={"__Host-plab_console": cookie},
        verify=str(console.stack.tls_cert),
        allow_redirects=False,
        timeout=30,
    )
    assert replay.status_code == 303 and replay.headers["Location"].endswith("/console/login")
    assert f"console.logout {console.name}" in audit_actions(admin, console.name)


def test_a_presented_session_id_is_not_adopted_at_login(stack, admin):
    user = create_user(admin, "admin", ["*"])
    first = signed_in(stack, user)
    [cookie] = [c for c in first.http.cookies if c.name == "__Host-plab_console"]
    planted = cookie.value
    second = Console(stack, user.name, user.password)
    second.http.cookies.set_cookie(cookie)
    assert second.login().status_code == 303
    fresh = second.http.cookies.get("__Host-plab_console")
    assert fresh and fresh != planted
    # the planted id died at that login
    assert first.get("/keys", allow_redirects=False).status_code == 303


def test_idle_timeout(stack_factory):
    stack = stack_factory(extra_env={"PLAB_CONSOLE_IDLE": "5", "PLAB_CONSOLE_LIFETIME": "600"})
    session = signed_in(stack, create_user(admin_of(stack), "admin", ["*"]))
    assert session.get("/keys").status_code == 200
    time.sleep(7)
    assert session.get("/keys", allow_redirects=False).status_code == 303


def test_audit_backups_status_pages(console, admin):
    audit = console.get("/audit")
    assert audit.status_code == 200 and "<td>user.create</td>" in audit.text
    verified = console.post("/audit/verify")
    assert verified.status_code == 200 and "The log verifies." in verified.text
    made = console.post("/backups")
    assert made.status_code == 303
    listing = console.get("/backups").text
    assert ".plab-backup" in listing or "backup" in listing
    drill = console.post("/backups/drill")
    assert drill.status_code == 200 and "PASS" in drill.text, drill.text
    status = console.get("/status")
    assert status.status_code == 200 and "Ready: redis answers" in status.text
    assert 'id="findings"' in status.text
    actions = audit_actions(admin, console.name)
    assert any(a.startswith("backup.create ") for a in actions)
    assert any(a.startswith("backup.drill ") for a in actions)


def test_console_headers_pass_the_edge_and_the_api_keeps_its_own(console, admin):
    page = console.get("/keys")
    csp = page.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    assert f'nonce="{nonce}"' in page.text
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert nonce not in console.get("/keys").headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["Strict-Transport-Security"].startswith("max-age=")
    assert page.headers["Cache-Control"] == "no-store"
    api = admin.get("/admin/users")
    assert api.headers["Content-Security-Policy"] == (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    )
    # straight to the control plane, past the edge: the middleware decides
    direct = admin.direct("GET", console.stack.config.cp_port, "/admin/users")
    assert direct.headers["Content-Security-Policy"].startswith("default-src 'none'; frame")
    login = admin.direct("GET", console.stack.config.cp_port, "/console/login")
    assert "'nonce-" in login.headers["Content-Security-Policy"]


def test_the_edge_sends_a_bare_console_path_to_the_console(stack):
    response = Client(stack).get("/console", allow_redirects=False)
    assert response.status_code == 301 and response.headers["Location"] == "/console/"
    # no edge Basic auth in front of the login form: the plane answers it
    form = Client(stack).get("/console/login")
    assert form.status_code == 200 and "WWW-Authenticate" not in form.headers


def test_audit_pages(console, admin):
    # The console's audit pages list the main chain (users, tokens, auth; KV changes
    # are in their shards' chains): more than one page (50) of user events.
    user = create_user(admin, "reader", [])
    for _ in range(28):
        assert admin.post(f"/admin/users/{user.name}/disable").status_code == 200
        assert admin.post(f"/admin/users/{user.name}/enable").status_code == 200
    first = console.get("/audit")
    later = re.search(r'href="/console/audit\?since=(\d+)">Next page', first.text)
    assert later, "the first page of a log longer than a page links the next"
    second = console.get(f"/audit?since={later.group(1)}")
    seqs = [int(n) for n in re.findall(r"<tr><td>(\d+)</td>", second.text)]
    assert seqs and seqs[0] == int(later.group(1))
    assert console.get("/audit?since=x").status_code == 400
    # a shard's chain: the key changes of that shard
    key = f"c{secrets.token_hex(4)}"
    assert admin.put(f"/ops/v1/kv/{key}", data=b"x").status_code == 201
    chain = f"s{shard_of(key):02d}"
    listed = console.get(f"/audit?chain={chain}").text
    while key not in listed:
        later = re.search(r'href="/console/audit\?since=(\d+)&amp;chain=s\d\d">Next page', listed)
        assert later, f"{key} is not in chain {chain}"
        listed = console.get(f"/audit?chain={chain}&since={later.group(1)}").text
    assert console.get("/audit?chain=s16").status_code == 400


def test_console_off_is_a_json_404(stack_factory):
    stack = stack_factory(extra_env={"PLAB_CONSOLE": "off"})
    response = Client(stack).get("/console/login")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_console_settings_are_validated():
    base = {
        "PLAB_SECRET_KEY": secrets.token_hex(32),
        "PLAB_TOKEN_KEY": secrets.token_hex(32),
        "PLAB_AUDIT_KEY": secrets.token_hex(32),
        "PLAB_BACKUP_KEY": secrets.token_hex(32),
        "PLAB_AUDIT_CHECKPOINT_KEY": secrets.token_hex(32),
    }
    assert Settings.from_env(base, plane="cp").console_idle == 900
    assert not Settings.from_env({**base, "PLAB_CONSOLE": "off"}, plane="cp").console
    for bad in (
        {"PLAB_CONSOLE": "maybe"},
        {"PLAB_CONSOLE_IDLE": "1"},
        {"PLAB_CONSOLE_IDLE": "600", "PLAB_CONSOLE_LIFETIME": "60"},
    ):
        with pytest.raises(ConfigError):
            Settings.from_env({**base, **bad}, plane="cp")


def test_sessions_end_at_their_absolute_lifetime_however_busy(stack):
    """The record store on the stack's redis: a session used all along still ends
    when its lifetime is up (the idle timer alone would keep it)."""
    from productionlab.console.sessions import SESSION, SessionStore
    from productionlab.users import USER, User

    client = stack.redis_client()
    store = SessionStore(client, secrets.token_hex(32), idle=300, lifetime=2)
    admin = User.from_hash(client.hgetall(USER + "admin"))
    session_id, csrf = store.create(admin)
    assert store.unsign(store.cookie_value(session_id)) == session_id
    assert store.unsign(store.cookie_value(session_id) + "x") is None
    found = store.load(session_id)
    assert found is not None and found.csrf == csrf and found.user.name == "admin"
    # the record is named by a hash of the id: a redis dump holds no usable id
    assert client.exists(SESSION + hashlib.sha256(session_id.encode()).hexdigest())
    assert not client.exists(SESSION + session_id)
    deadline = time.monotonic() + 30
    while store.load(session_id) is not None:  # renewed on every use ...
        assert time.monotonic() < deadline, "a session outlived its lifetime"
        time.sleep(0.2)
    assert store.load(session_id) is None  # ... and gone for good once past it


def test_make_run_hands_the_console_settings_to_the_control_plane(tmp_path):
    from productionlab.supervisor import StackConfig, Supervisor

    environ = {"PLAB_STATE_DIR": str(tmp_path), "PLAB_CONSOLE": "off", "PLAB_CONSOLE_IDLE": "60"}
    env = Supervisor(StackConfig.from_env(environ)).plane_env("cp")
    assert env["PLAB_CONSOLE"] == "off" and env["PLAB_CONSOLE_IDLE"] == "60"
    assert "PLAB_CONSOLE" not in Supervisor(StackConfig.from_env({})).plane_env("cp")
