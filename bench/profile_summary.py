"""Summarise py-spy's collapsed stacks ("raw" format): where an app process spends its time.

Prints the share of samples that pass through each function (inclusive) and
the functions where samples end (self), plus the share spent in password
hashing (argon2, scrypt, bcrypt, pbkdf2) - the slow hash that must not be on
the per-request path.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

SLOW_HASH = re.compile(r"argon2|scrypt|bcrypt|pbkdf2|PasswordHasher", re.IGNORECASE)


def frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    function, path = match.groups()
    short = "/".join(Path(path).parts[-2:])
    return f"{function} ({short})"


def collapsed_stacks(text: str) -> Iterator[tuple[str, int]]:
    """(stack, samples) of each line of py-spy's raw (collapsed) format,
    ``frame;frame;... count``; lines that are not one are passed over."""
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack, int(count_text)


def summarise(text: str, top: int = 30) -> str:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    slow = 0
    for stack, count in collapsed_stacks(text):
        frames = [frame_name(f) for f in stack.split(";")]
        total += count
        for name in set(frames):
            inclusive[name] += count
        self_time[frames[-1]] += count
        if SLOW_HASH.search(stack):
            slow += count
    if not total:
        return "no samples\n"
    lines = [
        f"samples: {total}",
        f"slow password hash (argon2/scrypt/bcrypt/pbkdf2): {slow} samples "
        f"= {100 * slow / total:.2f}%",
        "",
        f"top {top} by inclusive share (time spent in the function or below it):",
    ]
    lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", f"top {top} by self share (time spent in the function itself):"]
    lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in self_time.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("collapsed", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print(summarise(args.collapsed.read_text(), args.top), end="")


if __name__ == "__main__":
    main()
