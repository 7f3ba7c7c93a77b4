"""``python -m kdlab``: the same entry point as the ``kdlab`` console script."""

import sys

from kdlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
