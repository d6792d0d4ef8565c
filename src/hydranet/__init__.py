"""hydranet: multi-task learning for PyTorch."""

from hydranet import balancing, data, metrics
from hydranet.tasks import Task

__all__ = ["Task", "balancing", "data", "metrics"]
__version__ = "0.1.0"
