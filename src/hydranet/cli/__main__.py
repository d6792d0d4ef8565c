"""``python -m hydranet.cli``: the ``hydranet`` command."""

import sys

from hydranet.cli.main import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
