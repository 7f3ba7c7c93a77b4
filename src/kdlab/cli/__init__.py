"""The ``kdlab`` command line: :func:`main` (:mod:`.main`) and one module per subcommand
(:mod:`.commands`)."""

from kdlab.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
