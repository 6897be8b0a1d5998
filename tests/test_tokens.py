"""Bearer tokens: issue, use on both planes, refresh rotation, reuse detection,
revocation through user changes, and a signing-key rotation with overlap."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from productionlab.settings import Settings
from productionlab.token_keys import TokenError, TokenKeys
from productionlab.tokens import TokenService, build_service
from productionlab.users import UserStore
from tests.conftest import Client, admin_of, create_user
from tests.supervisor_kit import restart


def bearer(stack, token: str) -> dict:
    return {"headers": {"Authorization": f"Bearer {token}"}}


def issue(client: Client) -> dict:
    response = client.post("/auth/token")
    assert response.status_code == 200, response.text
    return response.json()


def refresh(stack, refresh_token: str):
    return Client(stack).post("/auth/refresh", json={"refresh_token": refresh_token})


def test_token_answer_shape(stack, make_user):
    user = make_user("reader", ["*"])
    pair = issue(user)
    assert set(pair) >= {"access_token", "refresh_token", "expires_in"}
    assert pair["expires_in"] == 15 * 60
    assert pair["refresh_expires_in"] == 7 * 24 * 3600
    assert pair["token_type"] == "Bearer"
    claims = json.loads(base64.urlsafe_b64decode(pair["access_token"].split(".")[2] + "=="))
    assert claims["sub"] == user.name and claims["typ"] == "access"
    assert {"gen", "exp", "jti", "fam", "iat"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 900


def test_token_needs_basic_credentials(stack, anonymous, make_user):
    assert anonymous.post("/auth/token").status_code == 401
    user = make_user("reader", ["*"])
    pair = issue(user)
    # an access token cannot mint new tokens (that would make it immortal)
    response = Client(stack).post("/auth/token", **bearer(stack, pair["access_token"]))
    assert response.status_code == 401


def test_bearer_works_through_the_edge_on_both_planes(stack, admin, make_user, key):
    writer = make_user("writer", [key])
    token = issue(writer)["access_token"]
    anon = Client(stack)
    assert anon.post(f"/write/{key}/v1", **bearer(stack, token)).status_code == 201
    read = anon.get(f"/read/{key}", **bearer(stack, token))
    assert read.status_code == 200 and read.json()["value"] == "v1"
    assert anon.get(f"/v1/kv/{key}", **bearer(stack, token)).content == b"v1"
    # grants still apply to tokens
    assert anon.get(f"/read/other-{key}", **bearer(stack, token)).status_code == 403
    # the control plane accepts Bearer too: an admin token on /admin and /ops
    admin_token = issue(admin)["access_token"]
    assert anon.get("/admin/users", **bearer(stack, admin_token)).status_code == 200
    assert anon.get(f"/ops/read/{key}", **bearer(stack, admin_token)).status_code == 200
    # and role checks hold: a writer's token is no admin
    assert anon.get("/admin/users", **bearer(stack, token)).status_code == 403


def test_bearer_on_every_app_process(stack, make_user, key):
    writer = make_user("writer", [key])
    token = issue(writer)["access_token"]
    for port in stack.config.ap_ports:
        response = Client(stack).direct("POST", port, f"/write/{key}/x", **bearer(stack, token))
        assert response.status_code in (200, 201), (port, response.text)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature
        lambda t: ".".join([*t.split(".")[:2], t.split(".")[2][:-1] + "x", t.split(".")[3]]),
        lambda t: "plab1.nokid." + ".".join(t.split(".")[2:]),
        lambda t: "garbage",
    ],
)
def test_tampered_tokens_are_refused(stack, make_user, key, mangle):
    reader = make_user("reader", ["*"])
    token = issue(reader)["access_token"]
    response = Client(stack).get(f"/read/{key}", **bearer(stack, mangle(token)))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_refresh_token_is_not_an_access_token_and_vice_versa(stack, make_user, key):
    reader = make_user("reader", ["*"])
    pair = issue(reader)
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, pair["refresh_token"])).status_code == 401
    )
    assert refresh(stack, pair["access_token"]).status_code == 401


def test_refresh_rotates_and_reuse_revokes_the_family(stack, make_user, key):
    reader = make_user("reader", ["*"])
    first = issue(reader)
    second = refresh(stack, first["refresh_token"])
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    third = refresh(stack, second["refresh_token"])
    assert third.status_code == 200
    third = third.json()
    # the new access token works ...
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, third["access_token"])).status_code == 404
    )
    # ... until an old refresh token is replayed: 401, and the whole family dies
    replay = refresh(stack, first["refresh_token"])
    assert replay.status_code == 401
    assert refresh(stack, third["refresh_token"]).status_code == 401
    for pair in (first, second, third):
        response = Client(stack).get(f"/read/{key}", **bearer(stack, pair["access_token"]))
        assert response.status_code == 401
    # another family of the same user is untouched
    other = issue(reader)
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, other["access_token"])).status_code == 404
    )
    assert refresh(stack, other["refresh_token"]).status_code == 200


def test_refresh_body_must_be_json(stack):
    response = Client(stack).post("/auth/refresh", data="nope")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


@pytest.mark.parametrize("change", ["disable", "rotate", "revoke-tokens"])
def test_user_changes_revoke_tokens(stack, admin, make_user, key, change):
    reader = make_user("reader", ["*"])
    pair = issue(reader)
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, pair["access_token"])).status_code == 404
    )
    assert admin.post(f"/admin/users/{reader.name}/{change}").status_code == 200
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, pair["access_token"])).status_code == 401
    )
    assert refresh(stack, pair["refresh_token"]).status_code == 401
    if change == "disable":
        # re-enabling does not bring the old tokens back
        assert admin.post(f"/admin/users/{reader.name}/enable").status_code == 200
        response = Client(stack).get(f"/read/{key}", **bearer(stack, pair["access_token"]))
        assert response.status_code == 401


def test_deleted_and_recreated_user_does_not_inherit_tokens(stack, admin, key):
    response = admin.post(
        "/admin/users", json={"name": "phoenix", "role": "reader", "prefixes": ["*"]}
    )
    assert response.status_code == 201
    old = issue(Client(stack, "phoenix", response.json()["password"]))
    assert admin.delete("/admin/users/phoenix").status_code == 204
    again = admin.post(
        "/admin/users", json={"name": "phoenix", "role": "reader", "prefixes": ["*"]}
    )
    assert again.status_code == 201
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, old["access_token"])).status_code == 401
    )
    assert admin.delete("/admin/users/phoenix").status_code == 204


def test_admin_lists_and_revokes_families(stack, admin, make_user, key):
    reader = make_user("reader", ["*"])
    pair = issue(reader)
    listed = admin.get(f"/admin/tokens?user={reader.name}")
    assert listed.status_code == 200
    families = listed.json()["families"]
    assert len(families) == 1 and not families[0]["revoked"]
    assert "token" not in json.dumps(families).replace("tokens", "")
    family = families[0]["family"]
    assert admin.post(f"/admin/tokens/{family}/revoke").status_code == 200
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, pair["access_token"])).status_code == 401
    )
    assert refresh(stack, pair["refresh_token"]).status_code == 401
    assert admin.get(f"/admin/tokens?user={reader.name}").json()["families"][0]["revoked"]
    assert admin.post("/admin/tokens/0123abcd/revoke").status_code == 404
    assert admin.get("/admin/tokens?user=no-such-user").status_code == 404
    keys = admin.get("/admin/tokens/keys").json()
    assert keys["current"] and keys["previous"] == []


def test_token_events_are_audited_without_tokens(stack, admin, make_user):
    reader = make_user("reader", ["*"])
    pair = issue(reader)
    newer = refresh(stack, pair["refresh_token"]).json()
    assert refresh(stack, pair["refresh_token"]).status_code == 401
    client = stack.redis_client()
    raw = b"\n".join(client.lrange("{plab}:audit", -200, -1)).decode()
    client.close()
    entries = [json.loads(line) for line in raw.splitlines()]
    mine = [e for e in entries if e["target"].startswith(reader.name + ":")]
    actions = [(e["action"], e["outcome"]) for e in mine]
    assert ("token.issue", "ok") in actions
    assert ("token.refresh", "ok") in actions
    assert ("token.reuse", "family_revoked") in actions
    for token in (pair["access_token"], pair["refresh_token"], newer["refresh_token"]):
        for part in token.split("."):
            if len(part) > 12:
                assert part not in raw
    assert reader.password not in raw


def test_expiry_and_wrong_key(stack):
    client = stack.redis_client()
    users = UserStore(client, b"x" * 32)
    user = users.get("admin")
    service = TokenService(client, users, TokenKeys.for_signing(stack.secret("token_key")))
    claims = service._claims("access", user, "f" * 24, 900, 1_000_000)
    token = service.sign(claims)
    with pytest.raises(TokenError, match="expired"):
        service.decode(token, "access", now=1_000_900)
    assert service.decode(token, "access", now=1_000_899).sub == "admin"
    other = TokenService(client, users, TokenKeys.for_signing("another-key-" + "9" * 40))
    with pytest.raises(TokenError, match="unknown_key"):
        other.decode(token, "access", now=1_000_000)
    client.close()


def cli(stack, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**stack.plane_env("cp"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "productionlab", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def restart_planes(stack) -> None:
    restart(stack, "cp")
    stack.wait_http(stack.config.cp_port, "/ready", 60)
    for index, port in enumerate(stack.config.ap_ports):
        restart(stack, f"ap{index + 1}")
        stack.wait_http(port, "/ready", 60)


def test_signing_key_rotation_keeps_live_tokens(stack_factory, key):
    stack = stack_factory(edge_rate=1000, edge_burst=1000, admin_rate=1000, admin_burst=1000)
    admin = admin_of(stack)
    reader = create_user(admin, "reader", ["*"])
    before = issue(reader)
    old_kid = before["access_token"].split(".")[1]

    rotated = cli(stack, "tokens", "rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    assert "previous key" in rotated.stdout and "Next steps" in rotated.stdout
    token_file = stack.secrets_dir / "token_key"
    assert (stack.secrets_dir / "token_key.previous").stat().st_mode & 0o777 == 0o600
    assert token_file.stat().st_mode & 0o777 == 0o600
    # a second rotation inside the overlap window is refused
    assert cli(stack, "tokens", "rotate-key").returncode == 1
    restart_planes(stack)

    keys = admin.get("/admin/tokens/keys").json()
    assert keys["previous"] == [old_kid] and keys["current"] != old_kid
    # live tokens signed with the previous key keep working, on every process
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, before["access_token"])).status_code
        == 404
    )
    for port in stack.config.ap_ports:
        response = Client(stack).direct(
            "GET", port, f"/read/{key}", **bearer(stack, before["access_token"])
        )
        assert response.status_code == 404
    renewed = refresh(stack, before["refresh_token"])
    assert renewed.status_code == 200
    assert renewed.json()["access_token"].split(".")[1] == keys["current"]

    # the previous key retires by itself a refresh lifetime after the rotation
    # (the rotation time is the .previous files' modification time)
    past = time.time() - 7 * 24 * 3600 - 60
    for name in ("token_key.previous", "token_public_key.previous"):
        os.utime(stack.secrets_dir / name, (past, past))
    restart_planes(stack)
    old_access = bearer(stack, before["access_token"])
    assert Client(stack).get(f"/read/{key}", **old_access).status_code == 401
    for port in stack.config.ap_ports:
        assert Client(stack).direct("GET", port, f"/read/{key}", **old_access).status_code == 401
    keys = admin.get("/admin/tokens/keys").json()
    assert keys["previous"] == [] and keys["retired"] == [old_kid]
    fresh = renewed.json()["access_token"]
    assert Client(stack).get(f"/read/{key}", **bearer(stack, fresh)).status_code == 404
    report = cli(stack, "check-prod")
    assert "previous token key retired" in report.stdout + report.stderr

    # and once its files are deleted it is simply unknown
    os.unlink(stack.secrets_dir / "token_key.previous")
    os.unlink(stack.secrets_dir / "token_public_key.previous")
    restart_planes(stack)
    assert Client(stack).get(f"/read/{key}", **old_access).status_code == 401
    assert Client(stack).get(f"/read/{key}", **bearer(stack, fresh)).status_code == 404


def test_the_app_plane_holds_only_the_public_key_and_cannot_mint_tokens(stack, make_user, key):
    """Section 2: the app plane verifies with the public key; a token signed with
    anything it holds (its secrets, the public key) is refused everywhere."""
    env = stack.plane_env("ap")
    assert "PLAB_TOKEN_KEY_FILE" not in env and "PLAB_BACKUP_KEY_FILE" not in env
    settings = Settings.from_env(env, plane="ap")
    assert settings.token_key == "" and settings.token_public_key
    client = stack.redis_client("ap")
    users = UserStore(client, b"unused", b"x" * 32)
    ap_service = build_service(settings, client, users)
    with pytest.raises(RuntimeError):
        ap_service.sign({"typ": "access"})
    reader = make_user("reader", ["*"])
    real = issue(reader)["access_token"]
    user = users.get(reader.name)
    held = [
        Path(v).read_text().strip()
        for k, v in env.items()
        if k.startswith("PLAB_") and k.endswith("_FILE")
    ]
    for material in held:
        forger = TokenService(client, users, TokenKeys.for_signing(material))
        claims = forger._claims("access", user, "f" * 24, 900, int(time.time()))
        forged = forger.sign(claims)
        # even with the real key id in front, the signature does not verify
        parts = forged.split(".")
        parts[1] = real.split(".")[1]
        for token in (forged, ".".join(parts)):
            for port in stack.config.ap_ports:
                response = Client(stack).direct("GET", port, f"/read/{key}", **bearer(stack, token))
                assert response.status_code == 401, response.text
    client.close()


def test_a_user_holds_at_most_n_live_token_families(stack_factory, key):
    """Issuing the (N+1)th family revokes the least recently used one, audited."""
    stack = stack_factory(
        edge_rate=1000,
        edge_burst=1000,
        admin_rate=1000,
        admin_burst=1000,
        extra_env={"PLAB_TOKEN_FAMILIES_MAX": "3"},
    )
    admin = admin_of(stack)
    reader = create_user(admin, "reader", ["*"])
    pairs = [issue(reader) for _ in range(3)]
    for pair in pairs:
        assert (
            Client(stack).get(f"/read/{key}", **bearer(stack, pair["access_token"])).status_code
            == 404
        )
    fourth = issue(reader)
    oldest = pairs[0]
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, oldest["access_token"])).status_code
        == 401
    )
    assert refresh(stack, oldest["refresh_token"]).status_code == 401
    for pair in (*pairs[1:], fourth):
        assert (
            Client(stack).get(f"/read/{key}", **bearer(stack, pair["access_token"])).status_code
            == 404
        )
    families = admin.get(f"/admin/tokens?user={reader.name}").json()
    live = [f for f in families["families"] if not f["revoked"]]
    assert len(live) == 3, families
    entries = admin.get("/admin/audit?limit=1000&since=1").json()["entries"]
    capped = [e for e in entries if e["action"] == "token.revoke" and e["outcome"] == "family_cap"]
    assert len(capped) == 1 and capped[0]["target"].startswith(f"{reader.name}:")
    # refreshing keeps a family in use: the least recently used one goes next
    renewed = refresh(stack, pairs[1]["refresh_token"])
    assert renewed.status_code == 200
    issue(reader)
    assert (
        Client(stack).get(f"/read/{key}", **bearer(stack, pairs[2]["access_token"])).status_code
        == 401
    )
    assert (
        Client(stack)
        .get(f"/read/{key}", **bearer(stack, renewed.json()["access_token"]))
        .status_code
        == 404
    )
