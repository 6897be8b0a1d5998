"""`make run` from a checkout inside a 0700 home: as root (the usual case in a VM or
container) and as an ordinary user. Each runs `python -m productionlab run` as a
subprocess from a copy of the checkout, the way `make run` does."""

from __future__ import annotations

import grp
import importlib.metadata
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from productionlab.supervisor import EDGE_USER, SERVICE_USER, find_binary
from tests.supervisor_kit import (
    RunProcess,
    all_ports_free,
    children_of,
    cmdline,
    copy_checkout,
    edge_client,
    port_env,
    ports_of,
    uid_of,
    wait_until,
)


def private_home(prefix: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(home, 0o700)
    return home


def live(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stack_processes(supervisor: int) -> dict[str, list[int]]:
    """The supervisor's children by kind, and nginx's workers."""
    kinds: dict[str, list[int]] = {"redis": [], "cp": [], "ap": [], "nginx-master": []}
    for pid in children_of(supervisor):
        line = cmdline(pid)
        if "redis-server" in line:
            kinds["redis"].append(pid)
        elif "serve cp" in line:
            kinds["cp"].append(pid)
        elif "serve ap" in line:
            kinds["ap"].append(pid)
        elif "nginx: master" in line:
            kinds["nginx-master"].append(pid)
    assert all(len(v) == 1 for v in kinds.values()), kinds
    kinds["nginx-workers"] = children_of(kinds["nginx-master"][0])
    assert len(kinds["nginx-workers"]) == 2, kinds
    return kinds


def no_world_bits(root: Path) -> list[str]:
    """What other users could list, read or write under root (where they can reach)."""
    found = []
    for directory, dirs, files in os.walk(root):
        for name in [directory, *(os.path.join(directory, n) for n in files)]:
            mode = os.lstat(name).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o006:
                found.append(f"{name} {oct(mode & 0o7777)}")
        # a directory others cannot enter hides everything below it
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(directory, d)).st_mode & 0o001]
    return found


def test_make_run_as_root_from_a_checkout_in_a_0700_home():
    assert os.geteuid() == 0, "this test proves the root case; the suite runs as root in CI"
    home = private_home("plab-root-home-")
    checkout = copy_checkout(home / "productionlab")
    state = checkout / "var"
    env = port_env()  # PLAB_STATE_DIR unset: var/ in the checkout, as `make run` uses it
    run = RunProcess(env, cwd=checkout).start()
    data_dir = None
    try:
        url = run.wait_ready()
        assert url == f"https://127.0.0.1:{env['PLAB_HTTPS_PORT']}"
        session, base = edge_client(state, int(env["PLAB_HTTPS_PORT"]))
        assert session.get(f"{base}/health").status_code == 200
        assert session.post(f"{base}/write/root-home/kept").status_code == 201
        assert session.get(f"{base}/read/root-home").json()["value"] == "kept"

        kinds = stack_processes(run.process.pid)
        service, edge = pwd.getpwnam(SERVICE_USER), pwd.getpwnam(EDGE_USER)
        for kind in ("redis", "cp", "ap"):
            assert [uid_of(p) for p in kinds[kind]] == [service.pw_uid], kind
        assert {uid_of(p) for p in kinds["nginx-workers"]} == {edge.pw_uid}
        assert uid_of(kinds["nginx-master"][0]) == 0  # binds, then workers drop via `user`
        every = [pid for pids in kinds.values() for pid in pids]
        assert 0 not in {uid_of(p) for p in every if p not in kinds["nginx-master"]}

        # Where things live and who may read them.
        data_dir = Path(os.readlink(state / "redis")).parent
        assert data_dir.parent == Path("/var/lib/productionlab")
        assert Path(os.readlink(state / "backups")) == data_dir / "backups"
        for name in ("redis", "backups"):
            info = (data_dir / name).stat()
            assert (info.st_uid, info.st_mode & 0o777) == (service.pw_uid, 0o700)
        for secret in (state / "secrets").iterdir():
            info = secret.stat()
            assert (info.st_uid, info.st_mode & 0o777) == (0, 0o600), secret
        runtimes = [p for p in Path("/run").glob("productionlab-*") if (p / "edge").exists()]
        runtime = next(p for p in runtimes if str(p).endswith(data_dir.name))
        htpasswd = runtime / "edge" / "htpasswd"
        info = htpasswd.stat()
        assert info.st_mode & 0o777 == 0o640
        assert grp.getgrgid(info.st_gid).gr_name == grp.getgrgid(edge.pw_gid).gr_name
        assert "admin:" in htpasswd.read_text()
        assert no_world_bits(runtime) == []
        assert no_world_bits(data_dir) == []
        assert no_world_bits(state / "secrets") == []

        status, err = run.stop()
        assert status == 0, err
        assert "Traceback" not in err
        assert [p for p in every if live(p)] == []
        assert all_ports_free(ports_of(env))
        assert not runtime.exists(), "the runtime dir is removed at stop"

        # A second `make run` keeps the data (it lives behind var/redis's symlink).
        run = RunProcess(env, cwd=checkout).start()
        run.wait_ready()
        session, base = edge_client(state, int(env["PLAB_HTTPS_PORT"]))
        assert session.get(f"{base}/read/root-home").json()["value"] == "kept"
        status, err = run.stop()
        assert status == 0, err
    finally:
        run.kill()
        shutil.rmtree(home, ignore_errors=True)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)


ORDINARY_USER = "plab-ordinary"


def ordinary_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(ORDINARY_USER)
    except KeyError:
        subprocess.run(
            [
                *(find_binary("useradd") or "useradd", "--system", "--no-create-home"),
                *("--shell", "/usr/sbin/nologin", "--user-group", ORDINARY_USER),
            ],
            check=True,
        )
        return pwd.getpwnam(ORDINARY_USER)


def runtime_distributions() -> set[str]:
    """requirements.txt's distributions and everything they require."""
    names = {
        re.split(r"[=<>\[ ;#]", line.strip())[0]
        for line in (Path(__file__).parent.parent / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    seen: set[str] = set()
    while names:
        name = names.pop()
        if name.lower() in seen:
            continue
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement whose marker excludes this Python
        seen.add(name.lower())
        for requirement in requirements:
            if "extra ==" not in requirement:
                names.add(re.split(r"[=<>\[ ;(!~]", requirement)[0])
    return seen


def copy_runtime_packages(destination: Path) -> None:
    """The installed runtime packages, for an interpreter the user can reach."""
    for name in runtime_distributions():
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or []:
            source = Path(distribution.locate_file(file))
            if ".." in file.parts or not source.is_file() or file.suffix == ".pyc":
                continue
            target = destination / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # redis imports async_timeout on Pythons before 3.11.3 (the OS's may be one, the
    # venv's not); 3.11's asyncio has the same context manager.
    (destination / "async_timeout.py").write_text("from asyncio import timeout  # noqa\n")


def test_make_run_as_an_ordinary_user_in_a_home_of_its_own():
    """As an ordinary user nothing changes: every process is that user's and the
    state stays in var/. The venv's interpreter may sit in root's 0700 home (pyenv),
    so the user runs the same Python version from the OS with the runtime packages
    copied into its home, as a user with their own venv would."""
    assert os.geteuid() == 0, "needs root to switch to the ordinary user"
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    assert Path(python).exists(), f"{python} is needed to run as another user"
    setpriv = find_binary("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run as another user"
    account = ordinary_account()
    home = private_home("plab-user-home-")
    checkout = copy_checkout(home / "productionlab")
    copy_runtime_packages(home / "site-packages")
    for directory, dirs, files in os.walk(home):
        for name in [directory, *(os.path.join(directory, n) for n in dirs + files)]:
            os.chown(name, account.pw_uid, account.pw_gid, follow_symlinks=False)
    env = port_env(
        HOME=str(home),
        USER=ORDINARY_USER,
        PYTHONPATH=f"{checkout}:{home / 'site-packages'}",
    )
    prefix = [setpriv, f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups"]
    run = RunProcess(env, cwd=checkout, argv_prefix=prefix, python=python).start()
    try:
        run.wait_ready()
        state = checkout / "var"
        session, base = edge_client(state, int(env["PLAB_HTTPS_PORT"]))
        assert session.post(f"{base}/write/user-home/v").status_code == 201
        assert session.get(f"{base}/read/user-home").json()["value"] == "v"
        kinds = stack_processes(run.process.pid)
        every = [pid for pids in kinds.values() for pid in pids]
        assert {uid_of(p) for p in every} == {account.pw_uid}
        assert (state / "redis").is_dir() and not (state / "redis").is_symlink()
        assert (state / "edge" / "htpasswd").stat().st_uid == account.pw_uid
        status, err = run.stop()
        assert status == 0, err
        assert [p for p in every if live(p)] == []
        wait_until(lambda: all_ports_free(ports_of(env)), 10, "ports freed")
    finally:
        run.kill()
        shutil.rmtree(home, ignore_errors=True)
