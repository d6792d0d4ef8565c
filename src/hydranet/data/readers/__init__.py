"""Real on-disk layouts as a :class:`~hydranet.data.MultiTaskDataset`.

One function per layout, each returning a :class:`ReaderDataset` (a shared ``MultiTaskDataset``
whose label arrays are known without opening an image), with its ``tasks``, class
``vocabularies`` and ``skipped`` files:

============================  ===========================================================
:func:`read_folders`          labels in folder names: ``root/black_jeans/*.jpg``
:func:`read_filenames`        labels in file names: ``30_0_3_20170117145159065.jpg.chip.jpg``
:func:`read_manifest`         a CSV / JSON / Parquet manifest: image paths or feature columns
:func:`read_detection`        boxes (and landmarks) per image plus image-level labels
:func:`read_hf`               a Hugging Face ``datasets.Dataset``: labels from its Arrow columns
============================  ===========================================================

They share their options: ``tasks`` (names, or ``{name: kind, Task fields or Task}``),
``transform`` / ``image_size`` (default :func:`default_transform`), ``vocabularies`` and
``unknown`` (class names of another split), ``verify`` and ``on_error`` (unreadable images).
"""

from hydranet.data.readers.base import ImageSamples, Parts, ReaderDataset
from hydranet.data.readers.columns import ReaderWarning, Skipped, load_vocabularies, save_vocabularies
from hydranet.data.readers.detection import read_detection
from hydranet.data.readers.filenames import UTKFACE_PATTERN, UTKFACE_TASKS, read_filenames
from hydranet.data.readers.folders import read_folders
from hydranet.data.readers.hf import read_hf, read_hf_path
from hydranet.data.readers.images import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DefaultTransform,
    ImageReadError,
    check_images,
    default_transform,
    load_image,
)
from hydranet.data.readers.manifest import read_manifest

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "UTKFACE_PATTERN",
    "UTKFACE_TASKS",
    "DefaultTransform",
    "ImageReadError",
    "ImageSamples",
    "Parts",
    "ReaderDataset",
    "ReaderWarning",
    "Skipped",
    "check_images",
    "default_transform",
    "load_image",
    "load_vocabularies",
    "read_detection",
    "read_filenames",
    "read_folders",
    "read_hf",
    "read_hf_path",
    "read_manifest",
    "save_vocabularies",
]
