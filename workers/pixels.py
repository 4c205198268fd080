"""From stored image bytes to the tensor a model is given, exactly as its image processor makes it.

The ``transformers`` pipeline opens an image, applies its EXIF orientation, converts it to
RGB and hands it to the model's image processor (resize -> rescale -> normalize). Assay
splits that work in two so that each half runs where it is cheapest:

- ``PixelRecipe.decode_into`` (in decoder processes): bytes -> RGB ``uint8`` pixels at
  the model's input size, resized by PIL with the processor's filter. A quarter of the bytes
  of the float tensor, so it is cheap to hand across processes and to the GPU.
- ``PixelRecipe.normalize`` (where the model runs, on a whole batch, in torch):
  ``uint8 -> float64 * rescale_factor -> float32``, then ``(x - mean) / std`` in float32.

Same operations in the same order and dtypes as the PIL image processors, so the result
is bit-for-bit the processor's (tested). ``PixelRecipe.for_processor`` covers the common
processors (a fixed ``height x width`` resize, no crop, no padding) and returns None for
any other; those run whole, in the decoder processes (``ProcessorRecipe``).
"""

from __future__ import annotations

import struct

import numpy as np
import pyspng
import torch
from PIL import ExifTags, Image, ImageOps

from workers.images import DEFAULT_MAX_PIXELS, InvalidImage, decode_image

_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))  # EXIF orientations that move pixels
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _RGB, _RGBA = 0, 2, 6  # PNG colour types


def plain_png_pixels(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """RGB pixels of an 8-bit grey, RGB or RGBA PNG that carries no EXIF, decoded by
    libspng (~3x faster than PIL on small images); None for anything else, which PIL decodes.

    Lossless, so the pixels are PIL's: an RGBA image loses its alpha channel and a grey
    one is repeated into three, as ``convert("RGB")`` does (tested). Whatever libspng
    refuses is left to PIL too, which then decodes it or says why not.
    """
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    # An eXIf chunk or an ImageMagick-style EXIF text chunk may rotate the image: PIL's
    # business. The byte search may also match inside compressed data; that costs only speed.
    if depth != 8 or colour not in (_GREY, _RGB, _RGBA) or not 0 < width * height <= max_pixels:
        return None
    if b"eXIf" in data or b"Raw profile type exif" in data:
        return None
    try:
        pixels = pyspng.load(data)
    except (RuntimeError, ValueError):
        return None
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels[:, :, :3] if pixels.shape[2] == 4 else pixels


def rgb_image(data: bytes) -> Image.Image:
    """The image as the pipeline sees it: EXIF orientation applied, converted to RGB.

    Pixel-for-pixel ``exif_transpose(image).convert("RGB")``, without the two copies those
    make of an image that needs neither (most of them).

    Raises:
        InvalidImage: the bytes are not a PNG or JPEG this process is willing to decode.
    """
    image = decode_image(data)
    if image.getexif().get(ExifTags.Base.Orientation, 1) in _TRANSPOSING_ORIENTATIONS:
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


class PixelRecipe:
    """A PIL image processor's fixed-size resize, rescale and normalize, split at ``uint8``."""

    def __init__(self, height: int, width: int, resample: int, scale: float, mean, std):
        self.height, self.width = height, width
        self.resample = resample
        self.scale = scale
        self.mean = tuple(float(m) for m in np.asarray(mean, dtype=np.float32))
        self.std = tuple(float(s) for s in np.asarray(std, dtype=np.float32))
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def for_processor(cls, processor) -> PixelRecipe | None:
        """The recipe for ``processor``, or None when it does more than this covers."""
        size = getattr(processor, "size", None)
        height, width = (getattr(size, "height", None), getattr(size, "width", None)) if size is not None else (None, None)
        if not (height and width):
            return None
        eligible = (
            getattr(processor, "backend", None) == "pil"
            and processor.do_resize
            and not getattr(processor, "do_center_crop", None)
            and not getattr(processor, "do_pad", None)
            and processor.do_rescale
            and processor.do_normalize
            and len(processor.image_mean) == len(processor.image_std) == 3
        )
        if not eligible:
            return None
        resample = processor.resample if processor.resample is not None else 2  # PIL BILINEAR, the default
        return cls(height, width, int(resample), processor.rescale_factor, processor.image_mean, processor.image_std)

    def batch_shape(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of one decoded batch (``N x H x W x 3`` ``uint8``)."""
        return (batch_size, self.height, self.width, 3), np.dtype(np.uint8)

    def decode_into(self, blobs: list[bytes], out: np.ndarray) -> None:
        """Decode ``blobs`` into ``out[:len(blobs)]``. Raises InvalidImage."""
        size = (self.width, self.height)  # PIL order
        for i, data in enumerate(blobs):
            pixels = plain_png_pixels(data)
            if pixels is not None and pixels.shape[:2] == out.shape[1:3]:
                out[i] = pixels
                continue
            image = rgb_image(data) if pixels is None else Image.fromarray(pixels)
            if image.size != size:  # PIL returns a copy for a same-size resize: skip it
                image = image.resize(size, resample=self.resample)
            out[i] = np.asarray(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """``N x H x W x 3`` ``uint8`` (on any device) -> ``N x 3 x H x W`` float32 model input."""
        mean, std = self._constants(pixels.device)
        values = pixels.permute(0, 3, 1, 2).to(torch.float64).mul_(self.scale).to(torch.float32)
        return values.sub_(mean).div_(std).contiguous()

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Made once per device: a fresh small copy to a GPU per batch would wait for the GPU.
        if device not in self._on_device:
            as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device)[:, None, None]  # noqa: E731
            self._on_device[device] = (as_tensor(self.mean), as_tensor(self.std))
        return self._on_device[device]


class ProcessorRecipe:
    """Any other image processor, run whole in the decoder: float32 model input out."""

    def __init__(self, processor):
        self.processor = processor

    def batch_shape(self, batch_size: int) -> None:
        return None  # not known before the processor has run: results travel by value

    def decode(self, blobs: list[bytes]) -> np.ndarray:
        images = [rgb_image(data) for data in blobs]
        return np.ascontiguousarray(self.processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels


def recipe_for(processor) -> PixelRecipe | ProcessorRecipe:
    return PixelRecipe.for_processor(processor) or ProcessorRecipe(processor)


__all__ = ["InvalidImage", "PixelRecipe", "ProcessorRecipe", "plain_png_pixels", "recipe_for", "rgb_image"]
