"""Decoding untrusted image bytes without being harmed by them.

The header is read first and the pixel count checked before any pixel is decoded, so a
small PNG that claims 30,000 × 30,000 pixels (a decompression bomb) is refused in
microseconds instead of allocating gigabytes. Only the formats users are told they may
send are accepted.
"""

from __future__ import annotations

import io
import warnings
from enum import StrEnum

from PIL import Image

ALLOWED_FORMATS = frozenset({"PNG", "JPEG"})
DEFAULT_MAX_PIXELS = 40_000_000  # ~6,300 × 6,300: far above any classifier's input


class ImageProblem(StrEnum):
    undecodable = "undecodable"
    decompression_bomb = "decompression_bomb"
    unsupported_format = "unsupported_format"


class InvalidImage(Exception):
    def __init__(self, problem: ImageProblem, message: str):
        super().__init__(f"{problem}: {message}")
        self.problem = problem
        self.message = message


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A fully decoded PIL image (not yet converted), or ``InvalidImage``.

    Raises:
        InvalidImage: with ``problem`` ``undecodable``, ``decompression_bomb`` or
            ``unsupported_format``.
    """
    try:
        with warnings.catch_warnings():
            # Our own limit applies; PIL's global warning/limit would be process-wide state.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            width, height = image.size
            if width <= 0 or height <= 0:
                raise InvalidImage(ImageProblem.undecodable, f"empty image {width}x{height}")
            if width * height > max_pixels:
                raise InvalidImage(
                    ImageProblem.decompression_bomb,
                    f"{width}x{height} pixels exceeds the limit of {max_pixels}",
                )
            image.load()
    except InvalidImage:
        raise
    except Image.DecompressionBombError as e:
        raise InvalidImage(ImageProblem.decompression_bomb, str(e)) from e
    except Image.UnidentifiedImageError as e:
        raise InvalidImage(ImageProblem.undecodable, "not a PNG or JPEG image") from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise InvalidImage(ImageProblem.undecodable, f"{type(e).__name__}: {e}") from e
    return image
