"""Who the local stack's components run as when it is started by root: the
dedicated system accounts, and the ownership of the directories they use."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess  # useradd, with a fixed argv  # nosec B404
import time
from dataclasses import dataclass
from pathlib import Path

from productionlab.processes import find_binary

# The account redis and both planes run as when the stack is started by root, and
# the one nginx's workers run as (it can read the htpasswd and nothing else of ours).
SERVICE_USER = "productionlab"
EDGE_USER = "productionlab-edge"
FALLBACK_USER = "nobody"


@dataclass(frozen=True)
class Account:
    """A system user and its primary group: who a component runs as."""

    name: str
    uid: int
    gid: int
    group: str


def system_account(name: str) -> Account:
    """The dedicated system user ``name``, created (no home, no shell) when missing.

    Where it cannot be created (no useradd), ``nobody`` is used instead: still not
    root, but shared with other services on the host (README.md, SECURITY.md).
    """
    for _attempt in range(5):
        try:
            entry = pwd.getpwnam(name)
            return Account(name, entry.pw_uid, entry.pw_gid, grp.getgrgid(entry.pw_gid).gr_name)
        except KeyError:
            pass
        useradd = find_binary("useradd")
        if useradd is None:
            break
        subprocess.run(  # noqa: S603 - fixed argv  # nosec B603
            [
                *(useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent"),
                *("--shell", "/usr/sbin/nologin", "--user-group", name),
            ],
            capture_output=True,
            check=False,
        )
        time.sleep(0.2)  # another stack may hold the passwd lock; look again
    entry = pwd.getpwnam(FALLBACK_USER)
    return Account(FALLBACK_USER, entry.pw_uid, entry.pw_gid, grp.getgrgid(entry.pw_gid).gr_name)


def traversable_by_others(path: Path) -> bool:
    """Every directory from / down to ``path`` lets other users through (o+x).

    A part that does not exist yet counts as traversable: the stack creates it 0755.
    """
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents] if p.exists())


def chown_tree(path: Path, account: Account) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, account.uid, account.gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), account.uid, account.gid, follow_symlinks=False)
