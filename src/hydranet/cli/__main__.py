"""``python -m hydranet.cli``: the ``hydranet`` command."""

import sys

from hydranet.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
