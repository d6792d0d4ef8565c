"""Multi-task data: datasets, task-scheduled and class-balanced batch samplers, collate."""

from hydranet.data.collate import Batch, collate, make_collate

__all__ = ["Batch", "collate", "make_collate"]
