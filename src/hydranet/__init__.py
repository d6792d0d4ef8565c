"""hydranet: multi-task learning for PyTorch."""

from hydranet import data
from hydranet.tasks import Task

__all__ = ["Task", "data"]
__version__ = "0.1.0"
