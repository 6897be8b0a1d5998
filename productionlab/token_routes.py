"""The token routes of the control plane: ``POST /auth/token`` (Basic
credentials for a new access/refresh pair) and ``POST /auth/refresh`` (rotate a
refresh token). Signing, verification and families live in tokens.py, the
signing keys in token_keys.py."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from productionlab.auth import Authenticator, actor
from productionlab.errors import AuthenticationRequired, MalformedRequest
from productionlab.services import services
from productionlab.token_keys import TokenError
from productionlab.tokens import AUDITED_REFUSALS, FORGERY_SIGNS, GUARD_NAME
from productionlab.users import User


def token_blueprint(auth: Authenticator) -> Blueprint:
    bp = Blueprint("tokens", __name__)

    @bp.post("/auth/token")
    @auth.route_limits.token
    @auth.basic.login_required
    def issue() -> Response:
        user: User = g.user
        pair = services().tokens.issue(user, actor(user.name))
        return jsonify(pair.as_dict())

    @bp.post("/auth/refresh")
    @auth.route_limits.token
    def refresh() -> Response:
        body = request.get_json(force=True, silent=True)
        token = body.get("refresh_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise MalformedRequest('the body must be {"refresh_token": "..."}')
        address = request.remote_addr or "-"
        auth.guard.check(address, GUARD_NAME)
        wired = services()
        try:
            pair = wired.tokens.refresh(token, actor)
        except TokenError as exc:
            reason = str(exc)
            if reason in FORGERY_SIGNS:
                auth.guard.failed(address, GUARD_NAME, f"refresh_{reason}")
            elif reason not in AUDITED_REFUSALS:
                wired.audit.append(actor("-"), "token.refresh", "-", reason)
            raise AuthenticationRequired("the refresh token is not valid") from None
        return jsonify(pair.as_dict())

    return bp
