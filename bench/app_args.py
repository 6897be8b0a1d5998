"""The command line of bench/'s stand-alone Flask apps (the naive baseline and the
ceiling's empty route): where to listen, plus what each app needs besides."""

from __future__ import annotations

import argparse


def parse(*required_ints: str) -> argparse.Namespace:
    """``--host`` (loopback unless told otherwise), ``--port`` and each of
    ``required_ints`` (e.g. ``"--threads"``), all of them required integers."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    for option in ("--port", *required_ints):
        parser.add_argument(option, type=int, required=True)
    return parser.parse_args()
