"""README.md's shell examples, run as written against a live local stack (issue 10, item 3).

The convention (also stated in an HTML comment in README.md, where people read it):

* Every fenced block opened with ```` ```sh ```` is run, in the order of the file,
  except a block whose opening fence directly follows ``<!-- readme-test: skip -->``.
* One example is one command: a line, plus the lines it continues onto with a
  trailing backslash. Plain comment lines are ignored.
* ``# → N`` beside a command (at the end of its last line, or on the comment line
  right under it) is what the README promises: the HTTP status of the answer for a
  ``curl`` command, its exit code otherwise (written ``# → exit N``). Text after N
  is for people. Every ``curl`` example must carry one; any other command without
  one must exit 0 (variable assignments such as ``URL=…``).
* ``<name>`` in a command is a placeholder a reader fills from an earlier answer:
  the field ``name`` of the latest JSON answer (or JSON line) that had one, else
  the response header ``name`` (e.g. ``<etag>``, quotes included). A placeholder
  no earlier answer fills is an error.

How they run: each example is a ``bash`` script with a clean environment (no
``PLAB_*``: the commands must find the stack on their own), preceded by every
earlier variable assignment and by a ``curl`` function that calls the OS's curl
as written plus ``-sS -D <file>``, so the runner reads the status line and
headers from that file (the README's commands are otherwise untouched). The
working directory stands for the checkout after ``make run``: ``var`` is the
test stack's state dir and ``.venv`` the running virtualenv. The stack uses
free ports, so ``https://127.0.0.1:8443`` and ``http://127.0.0.1:8101`` are
replaced by its edge URL and its app-plane process's address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess  # nosec B404
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from productionlab.supervisor import Supervisor
from tests.conftest import start_stack, stop_stack

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP_MARK = "<!-- readme-test: skip -->"
_FENCE_OPEN = re.compile(r"^```sh\s*$")
_ARROW = re.compile(r"\s*#\s*→\s*(exit\s+)?(\d{1,3})\b.*$")
_ARROW_LINE = re.compile(r"^\s*#\s*→\s*(exit\s+)?(\d{1,3})\b")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"<([a-z][a-z0-9_-]*)>")
_STATUS_LINE = re.compile(r"^HTTP/\S+\s+(\d{3})")


class ReadmeError(AssertionError):
    """A README example is malformed or does not do what the README says."""


@dataclass
class Example:
    command: str
    line: int
    expected: int | None = None

    @property
    def is_curl(self) -> bool:
        return self.command.lstrip().startswith("curl ")

    @property
    def is_assignment(self) -> bool:
        return bool(_ASSIGNMENT.match(self.command)) and "\n" not in self.command


def extract(markdown: str) -> list[Example]:
    """The runnable examples of a README, in order, with their expectations."""
    examples: list[Example] = []
    lines = markdown.splitlines()
    index = 0
    previous = ""
    while index < len(lines):
        line = lines[index]
        index += 1
        if not _FENCE_OPEN.match(line):
            if line.strip():
                previous = line.strip()
            continue
        skip = previous == SKIP_MARK
        block: list[Example] = []
        pending: list[str] = []
        start = index
        while index < len(lines) and not lines[index].startswith("```"):
            text, number = lines[index], index + 1
            index += 1
            if pending:
                pending.append(text)
            elif not text.strip():
                continue
            elif text.lstrip().startswith("#"):
                arrow = _ARROW_LINE.match(text)
                if arrow:
                    if not block or block[-1].expected is not None:
                        raise ReadmeError(f"README line {number}: '# →' under no command")
                    block[-1].expected = int(arrow.group(2))
                continue
            else:
                start = number
                pending.append(text)
            if pending and not pending[-1].endswith("\\"):
                joined = "\n".join(pending)
                pending = []
                arrow = _ARROW.search(joined)
                example = Example(joined[: arrow.start()] if arrow else joined, start)
                if arrow:
                    example.expected = int(arrow.group(2))
                block.append(example)
        if index >= len(lines):
            raise ReadmeError(f"README line {start}: unclosed ```sh block")
        index += 1  # the closing fence
        previous = ""
        if pending:
            raise ReadmeError(f"README line {start}: a command ends with a backslash")
        if not skip:
            examples.extend(block)
    for example in examples:
        if example.is_curl and example.expected is None:
            raise ReadmeError(
                f"README line {example.line}: curl example without '# → <status>': "
                f"{example.command}"
            )
    return examples


@dataclass
class Outcome:
    code: int  # HTTP status for curl, exit code otherwise
    stdout: str
    stderr: str


class Runner:
    """Runs examples in order in one directory, remembering answers and assignments."""

    def __init__(self, cwd: Path, substitutions: dict[str, str]):
        self.cwd = cwd
        self.substitutions = substitutions
        self.answers: dict[str, str] = {}
        self.assignments: list[str] = []
        self.headers_file = cwd / ".readme-test-headers"

    def fill(self, example: Example) -> str:
        command = example.command
        for old, new in self.substitutions.items():
            command = command.replace(old, new)

        def placeholder(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.answers:
                raise ReadmeError(
                    f"README line {example.line}: placeholder <{name}> has no earlier "
                    f"answer to fill it: {example.command}"
                )
            return self.answers[name]

        return _PLACEHOLDER.sub(placeholder, command)

    def environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PLAB_") and not k.lower().endswith("_proxy")
        }
        env["README_TEST_HEADERS"] = str(self.headers_file)
        return env

    def run(self, example: Example) -> Outcome:
        command = self.fill(example)
        script = "\n".join(
            [
                'curl() { command curl -sS --max-time 60 -D "$README_TEST_HEADERS" "$@"; }',
                *self.assignments,
                command,
                "",
            ]
        )
        self.headers_file.unlink(missing_ok=True)
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=self.cwd,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        outcome = Outcome(result.returncode, result.stdout, result.stderr)
        if example.is_curl:
            outcome.code = self._read_headers() if result.returncode == 0 else 0
        self._remember(result.stdout)
        if example.is_assignment and result.returncode == 0:
            self.assignments.append(command)
        return outcome

    def _read_headers(self) -> int:
        if not self.headers_file.is_file():
            return 0
        status, headers = 0, {}
        for line in self.headers_file.read_text(errors="replace").splitlines():
            match = _STATUS_LINE.match(line)
            if match:
                status, headers = int(match.group(1)), {}
            elif ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        for name, value in headers.items():
            self.answers[name] = value
        return status

    def _remember(self, stdout: str) -> None:
        documents = []
        try:
            documents.append(json.loads(stdout))
        except ValueError:
            for line in stdout.splitlines():
                try:
                    documents.append(json.loads(line))
                except ValueError:
                    continue
        for document in documents:
            if isinstance(document, dict):
                for name, value in document.items():
                    if isinstance(value, str | int) and not isinstance(value, bool):
                        self.answers[name] = str(value)

    def check(self, example: Example) -> Outcome:
        outcome = self.run(example)
        expected = 0 if example.expected is None else example.expected
        if outcome.code != expected:
            kind = "HTTP status" if example.is_curl else "exit code"
            raise ReadmeError(
                f"README line {example.line}: expected {kind} {expected}, got "
                f"{outcome.code}\n$ {example.command}\n--- stdout\n{outcome.stdout[-2000:]}"
                f"\n--- stderr\n{outcome.stderr[-2000:]}"
            )
        return outcome

    def check_all(self, examples: list[Example]) -> None:
        for example in examples:
            self.check(example)


@pytest.fixture(scope="module")
def readme_stack() -> Iterator[Supervisor]:
    """A stack with `make run`'s limits, on free ports, one app-plane process."""
    stack = start_stack(ap_workers=1)
    yield stack
    stop_stack(stack)


@pytest.fixture
def checkout(readme_stack: Supervisor) -> Iterator[Path]:
    """A directory that looks like the checkout after `make run`: var and .venv."""
    venv = Path(sys.prefix)
    assert (venv / "bin" / "productionlab").is_file(), "run the tests from the project's venv"
    assert shutil.which("curl"), "curl (the OS package) is needed to run README examples"
    directory = Path(tempfile.mkdtemp(prefix="plab-readme-"))
    (directory / "var").symlink_to(readme_stack.state)
    (directory / ".venv").symlink_to(venv)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def runner_for(stack: Supervisor, directory: Path) -> Runner:
    return Runner(
        directory,
        {
            "https://127.0.0.1:8443": stack.url,
            "http://127.0.0.1:8101": f"http://{stack.config.bind}:{stack.config.ap_ports[0]}",
        },
    )


# --- the README itself ----------------------------------------------------------
def test_readme_examples_do_what_the_readme_says(readme_stack: Supervisor, checkout: Path) -> None:
    examples = extract(README.read_text(encoding="utf-8"))
    commands = [e.command for e in examples]
    # The walk-through, the operator commands and the probes are all there.
    assert sum(e.is_curl for e in examples) >= 25, commands
    for needle in (
        "/admin/users",
        "/v1/kv/",
        "/auth/token",
        "/health",
        "/ready",
        "/metrics",
        "productionlab audit verify",
        "productionlab users create",
        "productionlab backup create",
        "productionlab check-prod",
    ):
        assert any(needle in c for c in commands), needle
    assert all(e.expected is not None for e in examples if not e.is_assignment), [
        e.command for e in examples if e.expected is None and not e.is_assignment
    ]
    runner_for(readme_stack, checkout).check_all(examples)


# --- the extractor and the runner can fail --------------------------------------
SAMPLE = """\
Intro.

<!-- readme-test: skip -->
```sh
make run     # never run by the test
```

```sh
URL=https://127.0.0.1:8443
# a comment for people
curl $URL/health \\
     -H 'X-Request-ID: r1'     # → 200 {"status":"ok"}
curl -X POST $URL/write/k/v
# → 401 {"error":…}
true   # → exit 0
```

```
not sh: ignored
```
"""


def test_extractor_reads_the_marks() -> None:
    examples = extract(SAMPLE)
    assert [(e.command, e.expected, e.line) for e in examples] == [
        ("URL=https://127.0.0.1:8443", None, 9),
        ("curl $URL/health \\\n     -H 'X-Request-ID: r1'", 200, 11),
        ("curl -X POST $URL/write/k/v", 401, 13),
        ("true", 0, 15),
    ]
    assert examples[0].is_assignment and examples[1].is_curl and not examples[3].is_curl


@pytest.mark.parametrize(
    "markdown, message",
    [
        ("```sh\ncurl $URL/health\n```\n", "curl example without"),
        ("```sh\n# → 200\n```\n", "under no command"),
        ("```sh\ntrue  # → exit 0\n# → exit 1\n```\n", "under no command"),
        ("```sh\ncurl $URL/health \\\n```\n", "ends with a backslash"),
        ("```sh\ntrue\n", "unclosed"),
    ],
)
def test_extractor_rejects_malformed_examples(markdown: str, message: str) -> None:
    with pytest.raises(ReadmeError, match=message):
        extract(markdown)


def test_a_drifted_example_fails(readme_stack: Supervisor, checkout: Path) -> None:
    runner = runner_for(readme_stack, checkout)
    good = extract(
        "```sh\nURL=https://127.0.0.1:8443\n"
        'CA="--cacert var/tls/tls.crt"\n'
        "curl $CA $URL/health   # → 200\n```\n"
    )
    runner.check_all(good)
    assert runner.answers["status"] == "ok"  # remembered from the JSON answer

    wrong_status = extract("```sh\ncurl $CA $URL/health   # → 404\n```\n")
    with pytest.raises(ReadmeError, match="expected HTTP status 404, got 200"):
        runner.check_all(wrong_status)

    wrong_exit = extract("```sh\n.venv/bin/productionlab users show nobody-here  # → exit 0\n```\n")
    with pytest.raises(ReadmeError, match="expected exit code 0, got 1"):
        runner.check_all(wrong_exit)

    unfilled = extract(
        "```sh\ncurl $CA -H 'If-Match: <no_such_answer>' $URL/health  # → 200\n```\n"
    )
    with pytest.raises(ReadmeError, match="placeholder <no_such_answer> has no earlier answer"):
        runner.check_all(unfilled)

    # Placeholders are filled from the latest answer: the request ID echoed back.
    echoed = extract(
        "```sh\ncurl $CA -H 'X-Request-ID: readme-1' $URL/ready   # → 200\n"
        "curl $CA -H 'X-Request-ID: again-<x-request-id>' $URL/ready   # → 200\n```\n"
    )
    runner.check_all(echoed)
    assert runner.answers["x-request-id"] == "again-readme-1"
