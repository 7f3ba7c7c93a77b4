"""Loading the networks that ``kdlab export`` writes: ``kdlab.export.load_exported(path)``
(the public name the README and ``kdlab export --help`` give); the writer and the file
format are :mod:`kdlab.tools.export`."""

from kdlab.tools.export import load_exported, read_exported

__all__ = ["load_exported", "read_exported"]
