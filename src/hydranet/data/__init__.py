"""Multi-task data: datasets, task-scheduled and class-balanced batch samplers, collate."""

from hydranet.data import readers
from hydranet.data.collate import Batch, collate, make_collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.labels import LabelScanWarning
from hydranet.data.sampler import TaskBatchSampler

__all__ = ["Batch", "LabelScanWarning", "MultiTaskDataset", "TaskBatchSampler", "collate", "make_collate", "readers"]
