"""Subcommands of the ``kdlab`` command line, one module each (see :mod:`kdlab.cli`)."""
