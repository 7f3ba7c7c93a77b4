"""kdlab's version (``kdlab --version``, run records, exported files, benchmark headers)."""

__version__ = "0.1.0"
