"""The one HTTP client of the tests and e2e: a client of the edge the way `curl`
users see it (requests, our certificate trusted, Basic auth).

``new_session`` is the one place that makes a ``requests.Session``: the
machine's CA bundle and proxy variables never apply (``trust_env`` off), the
edge's certificate is the trust anchor. ``HttpClient`` is the base of the
process-level suites' ``Client`` (tests/conftest.py, a local stack) and of
e2e's (a compose deployment); ``patient`` clients wait out the edge's 429s as a
polite client does (Retry-After).
"""

from __future__ import annotations

import time

import requests


def new_session(verify: str | bool = True, auth: tuple[str, str] | None = None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # the machine's CA bundle / proxy variables must not apply
    session.verify = verify
    if auth is not None:
        session.auth = auth
    return session


class HttpClient:
    """Subclasses give ``endpoint()`` and the fields below."""

    name: str | None = None
    password: str | None = None
    patient: bool = False
    timeout: float = 15

    def endpoint(self) -> tuple[str, str]:
        """The base URL of what this client talks to, and the CA file it trusts."""
        raise NotImplementedError

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.name, self.password or "") if self.name is not None else None

    def session(self) -> requests.Session:
        return new_session(self.endpoint()[1], self.auth)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        base_url = self.endpoint()[0]
        with self.session() as session:
            for _ in range(20 if self.patient else 1):
                response = session.request(method, base_url + path, **kwargs)
                if response.status_code != 429 or not self.patient:
                    return response
                time.sleep(float(response.headers.get("Retry-After", "1")))
            return response

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)
