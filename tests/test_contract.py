"""The contract is written once (productionlab/contract.py) and every layer reads it:
the edge's template, the KV core, users, errors, the console, the CLI and OpenAPI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from productionlab import contract, errors
from productionlab.configfiles import NGINX_TEMPLATE
from productionlab.openapi import build
from tests.test_configfiles import default_edge

PACKAGE = Path(contract.__file__).resolve().parent

# The literal spellings the contract replaced; none may come back outside it.
LITERALS = ("A-Za-z0-9_-]{1,256}", "A-Za-z0-9_-]{0,256}", "a-z0-9_-]{0,63}", "A-Za-z0-9._-]{1,64}")


def test_no_module_or_template_spells_a_pattern_of_its_own():
    sources = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.html"), NGINX_TEMPLATE]
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {literal}"
        for path in sources
        if path.name != "contract.py"
        for literal in LITERALS
        if literal in path.read_text()
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "key, ok",
    [
        ("a", True),
        ("A-z_09", True),
        ("k" * 256, True),
        ("k" * 257, False),
        ("", False),
        ("a.b", False),
        ("a/b", False),
        ("key\n", False),  # "$" would let this through; "\Z" does not
        ("é", False),
    ],
)
def test_key_rule(key, ok):
    assert bool(contract.KEY_RE.match(key)) is ok


def test_the_edge_checks_keys_with_the_contract_pattern():
    conf = default_edge()
    for route in ("/write/", "/read/", "/v1/kv/"):
        assert f'location ~ "^{route}{contract.KEY_CLASS}' in conf
    assert f'"~^{contract.USER_NAME_CLASS}\\z" $remote_user' in conf
    assert f'"~^{contract.REQUEST_ID_CLASS}$" $http_x_request_id' in conf
    # Every error page the edge writes carries a code from the contract's table.
    pages = re.findall(r'"code":"([a-z_]+)"', conf)
    assert pages and set(pages) <= {*contract.ERROR_CODES.values(), *contract.REFINED_CODES}


@pytest.mark.parametrize("plane", ["ap", "cp"])
def test_openapi_patterns_and_roles_come_from_the_contract(plane):
    document = build(plane)
    patterns: set[str] = set()
    enums: list[list] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.add(node["pattern"])
            if node.get("enum") and "reader" in node["enum"]:
                enums.append(node["enum"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert contract.KEY_PATTERN in patterns
    assert patterns <= {
        contract.KEY_PATTERN,
        contract.PREFIX_PATTERN,
        contract.USER_NAME_PATTERN,
        contract.GRANT_PATTERN,
        "^[0-9]+$",  # a version number in a header, not a contract pattern
    }
    if plane == "cp":
        assert enums and all(enum == list(contract.ROLES) for enum in enums)


def _error_classes() -> list[type[errors.PlabError]]:
    found, todo = [], [errors.PlabError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_carries_a_contract_code(cls):
    assert cls.code in contract.ERROR_CODES
    if cls.error_code in contract.REFINED_CODES:
        assert contract.REFINED_CODES[cls.error_code] == cls.code
    else:
        assert contract.ERROR_CODES[cls.code] == cls.error_code
    # Our names never shadow werkzeug's (a reader must not wonder which one a line means).
    import werkzeug.exceptions

    assert not hasattr(werkzeug.exceptions, cls.__name__)


def test_error_classes_render_as_werkzeug_http_exceptions():
    exc = errors.RateLimited("slow down", retry_after=7)
    assert isinstance(exc, errors.HTTPException)
    assert exc.code == 429 and str(exc) == "slow down"
    assert ("Retry-After", "7") in exc.get_headers()
    assert errors.KeyNotFound().message == "no such resource"


def test_html_patterns_escape_the_dash_for_the_v_flag():
    assert contract.html_pattern(contract.KEY_CLASS) == "[A-Za-z0-9_\\-]{1,256}"
    assert contract.html_pattern(contract.USER_NAME_CLASS) == "[a-z0-9][a-z0-9_\\-]{0,63}"


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("1", 1),
        ("0001000", 1000),  # leading zeros are still the number
        ("0", None),
        ("1001", None),
        ("-1", None),
        ("1.5", None),
        ("", None),
        ("\u0661", None),  # an Arabic-Indic one: isdigit() says yes, ASCII says no
        ("9" * 5000, None),  # past int()'s 4,300 digits: refused before int(), not a 500
        ("0" * 5000 + "7", 7),
    ],
)
def test_whole_number(raw, expected):
    assert contract.whole_number(raw, 1, 1000) == expected


@pytest.mark.inprocess
@pytest.mark.parametrize(
    "path",
    [
        "/write/{key}/v?ttl={n}",
        "/v1/kv?limit={n}",
        "/admin/audit?since={n}",
        "/v1/watch/{key}?index={n}&wait=0",
        "/v1/watch/{key}?wait={n}",
    ],
)
def test_a_number_of_thousands_of_digits_is_a_400_not_a_500(admin, key, path):
    url = path.format(key=key, n="9" * 5000)
    response = admin.post(url) if url.startswith("/write") else admin.get(url)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
