"""The package version, in one place: ``pyproject.toml`` reads it, and modules that record it (checkpoints)
import it from here rather than from the package itself."""

__all__ = ["__version__"]

__version__ = "0.1.0"
