"""The ``tmlab`` command: ``tmlab serve`` starts the embedded local server."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tmlab`` command; returns the exit status."""
    from tmlab.server.__main__ import build_parser, serve

    parser = argparse.ArgumentParser(prog="tmlab", description="tmlab command-line tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser(
        sub.add_parser(
            "serve",
            help="serve the local SmolLM2-135M-Instruct model over HTTP",
            description="An OpenAI-compatible chat-completions server over a local GGUF model.",
        )
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover
