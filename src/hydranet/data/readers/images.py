"""Decoding image files, checking them up front, and the built-in default transform.

Every image is opened with Pillow and converted to RGB before the transform sees it (grey-scale
and palette files would otherwise give tensors of another shape). A file that is missing or cannot
be decoded raises :class:`ImageReadError`, whose message names the file, so that a bad file met in a
``DataLoader`` worker mid-epoch says which one it is.

:func:`default_transform` needs only Pillow, NumPy and PyTorch: it resizes to ``size = (H, W)``
(bilinear), scales pixel values to ``[0, 1]`` and, when ``mean`` and ``std`` are given, normalises
each channel ``c`` as ``x_c = (x_c - mean_c) / std_c``. Any other callable taking a PIL image (such
as a ``torchvision.transforms.Compose``) can be used instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from PIL import Image

from hydranet._checks import check_bool

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "DefaultTransform",
    "ImageReadError",
    "check_images",
    "default_transform",
    "load_image",
    "CheckLevel",
]

#: File extensions (lower case) the folder and file-name readers take as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: Channel statistics of ImageNet, for backbones pretrained on it.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_HINT = "run with verify=True to check all files up front or on_error='skip'"

# Pillow's ways of saying "this is not a readable image": unknown format (UnidentifiedImageError is an
# OSError), truncated data (OSError), broken headers (SyntaxError, ValueError), absurd sizes.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageReadError(RuntimeError):
    """An image file is missing or cannot be decoded; the message names the file."""


def load_image(path: str) -> Image.Image:
    """The image at ``path`` as an RGB PIL image, or :class:`ImageReadError` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # decodes now, while the file is open
    except FileNotFoundError as err:
        raise ImageReadError(f"Image file {path} does not exist; {_HINT}.") from err
    except _DECODE_ERRORS as err:
        raise ImageReadError(f"Cannot decode image {path}: {err}; {_HINT}.") from err


CheckLevel = Literal["header", "verify", "decode"]


def _check_one(path: str, level: CheckLevel) -> tuple[int, int, str | None]:
    try:
        with Image.open(path) as image:
            width, height = image.size
            if level == "verify":
                image.verify()
            elif level == "decode":
                image.load()
        return width, height, None
    except FileNotFoundError:
        return 0, 0, "file does not exist"
    except _DECODE_ERRORS as err:
        return 0, 0, f"cannot decode: {err}"


def check_images(
    paths: Sequence[str] | np.ndarray, level: CheckLevel = "verify", *, workers: int | None = None
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Open every file (in parallel threads: this is IO) and report the unreadable ones.

    Args:
        paths: image files.
        level: ``"header"`` reads the size only; ``"verify"`` also runs Pillow's ``Image.verify()``
            (structure and checksums, without decoding pixels); ``"decode"`` decodes every pixel,
            which also catches truncated files.
        workers: threads; default ``min(32, 4 * cpus)``.

    Returns:
        ``sizes``, int64 ``[n, 2]`` of ``(width, height)`` (zeros for bad files), and the bad files as
        ``[(position, reason), ...]``.
    """
    n = len(paths)
    sizes = np.zeros((n, 2), dtype=np.int64)
    if n == 0:
        return sizes, []
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=min(workers, n)) as pool:
        results = list(pool.map(_check_one, paths, [level] * n, chunksize=max(1, n // (4 * workers))))
    sizes[:] = [(w, h) for w, h, _ in results]
    return sizes, [(k, reason) for k, (_, _, reason) in enumerate(results) if reason is not None]


def _pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ValueError(f"size must be a positive int or a pair (height, width) of positive ints, got {size!r}.")
    return int(pair[0]), int(pair[1])


class DefaultTransform:
    """PIL image -> float tensor ``[C, H, W]``: resize, scale to ``[0, 1]``, normalise (picklable).

    Build it with :func:`default_transform`.
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        grayscale: bool = False,
    ) -> None:
        self.size = _pair(size)
        self.grayscale = check_bool("grayscale", grayscale)
        channels = 1 if grayscale else 3
        if (mean is None) != (std is None):
            raise ValueError("Give both mean and std to normalise, or neither to keep values in [0, 1].")
        self.mean = self.std = None
        if mean is not None and std is not None:
            mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
            if len(mean_t) not in (1, channels) or len(std_t) not in (1, channels):
                raise ValueError(
                    f"mean and std need 1 or {channels} values (one per channel of a "
                    f"{'grey-scale' if grayscale else 'RGB'} image), got {len(mean_t)} and {len(std_t)}."
                )
            if min(std_t) <= 0:
                raise ValueError(f"std values must be > 0, got {std_t}.")
            self.mean, self.std = mean_t, std_t

    def __call__(self, image: Image.Image) -> torch.Tensor:
        mode = "L" if self.grayscale else "RGB"
        if image.mode != mode:
            image = image.convert(mode)
        if self.size is not None and image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)  # PIL wants (W, H)
        pixels = np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy wants one
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32).div_(255.0)
        if self.mean is not None and self.std is not None:
            x.sub_(torch.tensor(self.mean).view(-1, 1, 1)).div_(torch.tensor(self.std).view(-1, 1, 1))
        return x

    def __repr__(self) -> str:
        return f"default_transform(size={self.size}, mean={self.mean}, std={self.std}, grayscale={self.grayscale})"


def default_transform(
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    grayscale: bool = False,
) -> DefaultTransform:
    """The built-in transform: resize, convert to a float tensor ``[C, H, W]`` in ``[0, 1]``, normalise.

    Args:
        size: ``(H, W)`` or one int for a square; ``None`` keeps each image's size (batches then need
            images of one size).
        mean, std: per-channel statistics, e.g. :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` for a
            pretrained backbone; ``None`` (both) leaves values in ``[0, 1]``.
        grayscale: one channel instead of three.
    """
    return DefaultTransform(size=size, mean=mean, std=std, grayscale=grayscale)
