"""The ``hydranet`` command line (``hydranet = "hydranet.cli.main:main"``).

* :mod:`~hydranet.cli.main`: argument parsing, exit codes, the one error surface; parsing imports
  neither torch nor the library, so ``hydranet --help`` and argument errors answer at once;
* :mod:`~hydranet.cli.commands`: what each sub-command does;
* :mod:`~hydranet.cli.config`: the YAML schema, validated as a whole before anything is built;
* :mod:`~hydranet.cli.sources`: config sections -> datasets;
* :mod:`~hydranet.cli.demo`, :mod:`~hydranet.cli.bench`: ``hydranet demo`` and ``hydranet bench``.

The library never imports this package.
"""

from hydranet.cli.main import main

__all__ = ["main"]
