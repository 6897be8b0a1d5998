"""docs/ARCHITECTURE.md stays true: its route table is every route of both planes
(with the function that serves it), and every file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from productionlab import ap, cp
from productionlab.secretgen import ensure_secrets
from productionlab.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
# The KV routes' tail rules, as the contract spells them.
KV_PATHS = {
    "kv_routes:write": "/write/<key>/<value>",
    "kv_routes:read": "/read/<key>",
    "kv_routes:item": "/v1/kv/<key>",
    "watch_routes:watch_key": "/v1/watch/<key>",
}


ROW = re.compile(r"\| ([A-Z, ]+) \| `([^`]+)` \| ([a-z, ()/]+) \| `([a-z_.]+:[a-z_]+)` \|")
NAMED_FILE = re.compile(r"`((?:productionlab|tests|nginx|docs|bench|e2e)/[A-Za-z0-9_./-]+)`")


def documented_routes() -> set[tuple[str, str, str, str]]:
    rows = set()
    for line in DOC.read_text().splitlines():
        match = re.fullmatch(
            r"\| ([A-Z, ]+) \| `([^`]+)` \| ([a-z, ()/]+) \| `([a-z_.]+:[a-z_]+)` \|", line
        )
        if match:
            methods, path, planes, handler = match.groups()
            rows.add((methods, path, planes, handler))
    return rows


@pytest.fixture(scope="module")
def served_routes(tmp_path_factory) -> set[tuple[str, str, str, str]]:
    secrets = tmp_path_factory.mktemp("secrets")
    ensure_secrets(secrets)
    found: dict[tuple[str, str, str], list[str]] = {}
    for plane, module in (("ap", ap), ("cp", cp)):
        environ = {
            "PLAB_STATE_DIR": str(tmp_path_factory.mktemp("state")),
            "PLAB_SECRETS_DIR": str(secrets),
            # Never contacted: making an app has no side effects.
            "PLAB_REDIS_URL": "redis://127.0.0.1:1/0",
        }
        for name in ("secret_key", "token_public_key", "token_key", "backup_key"):
            environ[f"PLAB_{name.upper()}_FILE"] = str(secrets / name)
        environ["PLAB_AUDIT_CHECKPOINT_KEY_FILE"] = str(secrets / "audit_checkpoint_key")
        environ["PLAB_REDIS_PASSWORD_FILE"] = str(secrets / f"redis_{plane}_password")
        app = module.create_app(Settings.from_env(environ, plane=plane))
        for rule in app.url_map.iter_rules():
            if rule.endpoint.endswith("static"):
                continue
            view = app.view_functions[rule.endpoint]
            handler = f"{view.__module__.removeprefix('productionlab.')}:{view.__name__}"
            path, where = rule.rule, plane
            if path.startswith("/ops/"):
                path, where = path[len("/ops") :], "cp (/ops)"
            if handler in KV_PATHS:
                if not path.endswith("<tail:_rest>"):
                    continue  # the bare prefix exists only to answer 400
                path = KV_PATHS[handler]
            methods = ", ".join(sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"}))
            found.setdefault((methods, path, handler), []).append(where)
    return {(m, p, ", ".join(planes), h) for (m, p, h), planes in found.items()}


def test_the_route_table_is_every_route(served_routes):
    documented = documented_routes()
    assert len(documented) > 50
    assert served_routes - documented == set(), "served but not in docs/ARCHITECTURE.md"
    assert documented - served_routes == set(), "in docs/ARCHITECTURE.md but not served"


def test_every_file_the_doc_names_exists():
    text = DOC.read_text()
    named = set(
        re.findall(r"`((?:productionlab|tests|nginx|docs|bench|e2e)/[A-Za-z0-9_./-]+)`", text)
    )
    assert len(named) > 40
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []


def test_the_concern_table_names_only_real_modules():
    text = DOC.read_text()
    section = text.split("## Where each concern lives", 1)[1].split("\n## ", 1)[0]
    modules = set(re.findall(r"`(productionlab/[a-z_/]+\.py)`", section))
    assert modules and all((ROOT / module).is_file() for module in modules)
    # Every module of the package is placed somewhere in the doc (one hop to any of them).
    package = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "productionlab").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    mentioned = {
        module
        for module in package
        if f"`{module}`" in text
        or f"`{Path(module).relative_to('productionlab')}`" in text
        or f"`{Path(module).name}`" in text
    }
    assert package - mentioned == set()
