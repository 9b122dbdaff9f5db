"""The ``tmlab`` command: ``tmlab serve`` starts the embedded local server; ``tmlab demo``
serves the Explorer (or another notebook) as a Voilà app."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tmlab`` command; returns the exit status."""
    from tmlab.jupyter.demo import build_parser as build_demo_parser
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
    build_demo_parser(
        sub.add_parser(
            "demo",
            help="serve the Explorer (or NOTEBOOK) as a web app with Voilà",
            description="Serve a notebook with Voilà: its widgets and text full-page, no code "
            "cells. Default: the Explorer app with lesson prompts (explorer-app.ipynb); "
            "--projector for a room (large type, each lesson's controls only).",
        )
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "demo":
        from tmlab.jupyter.demo import demo

        return demo(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover
