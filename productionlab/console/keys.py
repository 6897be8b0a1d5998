"""The key pages: list by prefix, create, show, edit (a CAS write at the
version the form was opened at), set a TTL, delete. Each calls the KV core as
the signed-in admin, so every change is audited exactly as through the API."""

from __future__ import annotations

import base64
import binascii

from flask import Blueprint, Response, request

from productionlab.auth import actor
from productionlab.console.common import PAGE, back, kv, render, session, signed_in
from productionlab.contract import (
    KEY_RE,
    KEY_RULE,
    MAX_TTL,
    PREFIX_PATTERN,
    PREFIX_RE,
    whole_number,
)
from productionlab.errors import KeyNotFound, MalformedRequest, VersionConflict
from productionlab.kv import effective_prefixes
from productionlab.kv_routes import decode_cursor, encode_cursor
from productionlab.services import services
from productionlab.store.layout import shard_for


def valid_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise MalformedRequest(KEY_RULE)
    return key


def form_value() -> bytes:
    raw = request.form.get("value", "")
    encoding = request.form.get("encoding", "text")
    if encoding == "base64":
        try:
            return base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MalformedRequest("the value is not valid base64") from None
    if encoding != "text":
        raise MalformedRequest("encoding is text or base64")
    return raw.replace("\r\n", "\n").encode("utf-8")


def form_ttl() -> int | None:
    raw = request.form.get("ttl", "").strip()
    if not raw:
        return None
    ttl = whole_number(raw, 1, MAX_TTL)
    if ttl is None:
        raise MalformedRequest(f"TTL is a whole number of seconds from 1 to {MAX_TTL}")
    return ttl


def form_version() -> list[str]:
    raw = request.form.get("version", "")
    if not (raw.isascii() and raw.isdigit()):
        raise MalformedRequest("the form lost the version it was opened at; reload the key")
    return [raw]


def stale(exc: VersionConflict, key: str) -> str:
    now = exc.headers.get("ETag", "").strip('"')
    return (
        f"Stale edit refused: {key} changed since you opened it"
        + (f" (it is now version {now})" if now else " (it was deleted)")
        + ". Nothing was written; review the current value and edit again."
    )


def register(bp: Blueprint) -> None:
    """The key pages, on the console blueprint."""

    @bp.get("/keys")
    @signed_in
    def keys() -> Response:
        prefix = request.args.get("prefix", "")
        if not PREFIX_RE.match(prefix):
            raise MalformedRequest(f"a prefix matches {PREFIX_PATTERN}")
        cursor = request.args.get("cursor", "")
        found, last = kv().list_keys(
            effective_prefixes(session().user.grants, prefix), decode_cursor(cursor), PAGE
        )
        return render(
            "keys.html",
            title="Keys",
            prefix=prefix,
            keys=found,
            next_cursor=encode_cursor(last) if last else None,
            paged=bool(cursor),
        )

    @bp.post("/keys")
    @signed_in
    def create_key() -> Response:
        key = valid_key(request.form.get("key", ""))
        try:
            kv().put(key, form_value(), actor(), ttl=form_ttl(), if_absent=True)
        except VersionConflict:
            return back("console.show_key", f"{key} already exists; edit it here.", key=key)
        return back("console.show_key", f"Created {key}.", key=key)

    @bp.get("/kv/<key>")
    @signed_in
    def show_key(key: str) -> Response:
        return key_page(valid_key(key))

    @bp.post("/kv/<key>")
    @signed_in
    def edit_key(key: str) -> Response:
        valid_key(key)
        try:
            result = kv().put(key, form_value(), actor(), ttl=form_ttl(), if_match=form_version())
        except VersionConflict as exc:
            # Say so, show what is there now, and keep the operator's draft.
            try:
                return key_page(
                    key, status=409, flash=stale(exc, key), draft=request.form.get("value")
                )
            except KeyNotFound:
                return back("console.keys", stale(exc, key))
        return back("console.show_key", f"Saved {key} (version {result.version}).", key=key)

    @bp.post("/kv/<key>/ttl")
    @signed_in
    def set_ttl(key: str) -> Response:
        """Rewrite the value as it was at the form's version, with a TTL (one CAS write)."""
        ttl = form_ttl()
        if ttl is None:
            raise MalformedRequest("give a TTL in seconds")
        item = kv().get(valid_key(key))
        try:
            kv().put(key, item.value, actor(), ttl=ttl, if_match=form_version())
        except VersionConflict as exc:
            return back("console.show_key", stale(exc, key), key=key)
        return back("console.show_key", f"{key} now expires in {ttl} s.", key=key)

    @bp.get("/kv/<key>/delete")
    @signed_in
    def confirm_delete(key: str) -> Response:
        item = kv().get(valid_key(key))
        return render("confirm_delete.html", title=f"Delete {key}", item=item)

    @bp.post("/kv/<key>/delete")
    @signed_in
    def delete_key(key: str) -> Response:
        valid_key(key)
        try:
            kv().delete(key, actor(), if_match=form_version())
        except VersionConflict as exc:
            return back("console.show_key", stale(exc, key), key=key)
        return back("console.keys", f"Deleted {key}.")


def key_page(key: str, status: int = 200, flash: str = "", draft: str | None = None) -> Response:
    """A key as it is now: text, or hex and base64 when the value is not UTF-8."""
    item = kv().get(key)
    ttl = services().redis.pttl(shard_for(key).item(key))
    try:
        text: str | None = item.value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    b64 = base64.b64encode(item.value).decode() if text is None else ""
    return render(
        "key.html",
        status,
        flash=flash,
        title=key,
        item=item,
        text=text,
        hex=item.value[:4096].hex(" ", 1) if text is None else "",
        b64=b64,
        draft=draft if draft is not None else (text if text is not None else b64),
        ttl=max(0, int(ttl) // 1000) if ttl and int(ttl) > 0 else None,
    )
