"""Pieces of BENCHMARKS.md's text that more than one section writes the same way."""

from __future__ import annotations

from collections.abc import Callable


def closing_note(
    items: list[dict], describe: Callable[[list[dict]], list[str]], when_none: str
) -> list[str]:
    """A section's closing paragraph: a blank line, then ``describe(items)``, or
    ``when_none`` when there are no items (so the report says that nothing happened
    rather than saying nothing)."""
    return ["", *(describe(items) if items else [when_none])]
