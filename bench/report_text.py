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


def separate_run_note(info: dict, option: str) -> list[str]:
    """The paragraph a section opens with when it was measured on its own
    (``python bench/run.py <option>``, ``<section>_info.separate_run``); else nothing."""
    if not info.get("separate_run"):
        return []
    machine = info.get("machine", {})
    return [
        f"Measured on its own (`python bench/run.py {option}`, {machine.get('date', '?')}, "
        f"{info.get('seconds', '?')} s per round, load before "
        f"{' '.join(machine.get('load_before', []))}, after "
        f"{' '.join(info.get('load_after', []))}), not in the run the sections above "
        "come from.",
        "",
    ]
