"""Multi-task models: HydraNet (one backbone, one head per task) and backbones."""

from hydranet.models.backbones import BACKBONES, MLP, ConvNet, build_backbone
from hydranet.models.heads import make_head
from hydranet.models.hydra import HydraNet

__all__ = ["BACKBONES", "MLP", "ConvNet", "HydraNet", "build_backbone", "make_head"]
