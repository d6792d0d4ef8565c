"""hydranet: multi-task learning for PyTorch."""

from hydranet import balancing, data, losses, metrics, models, runtime
from hydranet.tasks import Task
from hydranet.train import Trainer

# The name the README and earlier releases use for the runtime layer.
distributed = runtime

__all__ = ["Task", "Trainer", "balancing", "data", "distributed", "losses", "metrics", "models", "runtime"]
__version__ = "0.1.0"
