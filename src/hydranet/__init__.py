"""hydranet: multi-task learning for PyTorch."""

from hydranet import balancing, data, distributed, losses, metrics, models
from hydranet.tasks import Task
from hydranet.train import Trainer

__all__ = ["Task", "Trainer", "balancing", "data", "distributed", "losses", "metrics", "models"]
__version__ = "0.1.0"
