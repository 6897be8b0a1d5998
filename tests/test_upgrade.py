"""Upgrading from the previous release: its stored state keeps working.

Each change to stored state adds its own checks here (or in a test of its own
built on :mod:`upgrade_kit`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from upgrade_kit import PreviousState, previous_release_state

from productionlab.localstack import LocalStack, StackConfig
from tests.conftest import Client, state_dir


@pytest.fixture(scope="module")
def upgraded() -> Iterator[tuple[LocalStack, PreviousState]]:
    """The previous release's state, then this release started on it."""
    directory = state_dir("plab-upgrade-")
    old = previous_release_state(directory)
    stack = LocalStack(
        StackConfig.ephemeral(
            directory,
            ap_workers=1,
            threads=4,
            edge_rate=5000,
            edge_burst=5000,
            admin_rate=1000,
            admin_burst=1000,
        )
    )
    stack.start(timeout=90)
    yield stack, old
    stack.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_previous_release_wrote_something(upgraded):
    _, old = upgraded
    assert old.keys and old.users
    assert old.audit_verify.get("ok") is True, old.audit_verify


def test_users_and_keys_survive_the_upgrade(upgraded):
    stack, old = upgraded
    writer = Client(stack, "olduser-w", old.users["olduser-w"]["password"])
    reader = Client(stack, "olduser-r", old.users["olduser-r"]["password"])
    for key, stored in old.keys.items():
        response = reader.get(f"/v1/kv/{key}")
        assert response.status_code == 200, (key, response.text)
        if "value" in stored:
            assert response.content == stored["value"].encode()
        else:
            assert response.content == bytes.fromhex(stored["value_hex"])
    assert reader.get("/v1/kv/app-old-4").status_code == 404
    response = writer.post("/write/app-old-0/after-upgrade")
    assert response.status_code == 200, response.text
    assert response.json()["version"] > old.keys["app-old-0"]["version"]
    assert reader.get("/read/app-old-0").json()["value"] == "after-upgrade"


def test_admin_and_audit_survive_the_upgrade(upgraded):
    stack, old = upgraded
    admin = Client(stack, "admin", old.admin_password)
    response = admin.get("/admin/users")
    assert response.status_code == 200, response.text
    verify = admin.post("/admin/audit/verify")
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True, verify.json()
