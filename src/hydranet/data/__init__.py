"""Multi-task data: datasets, task-scheduled and class-balanced batch samplers, collate."""

from hydranet.data import readers
from hydranet.data._collate import Batch, collate, make_collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.labels import LabelScanWarning
from hydranet.data.sampler import TaskBatchSampler
from hydranet.data.stream import MultiTaskStream

__all__ = ["Batch", "LabelScanWarning", "MultiTaskDataset", "MultiTaskStream", "TaskBatchSampler", "collate", "make_collate", "readers"]
