"""Image files as every viewer shows them: EXIF orientation applied, JPEG data fully checked.

A phone photo stores its pixels sideways with an orientation tag; `upright` turns the pixels the
way the tag says, so boxes and masks drawn on the photo as displayed line up with them.
"""

from __future__ import annotations

from PIL import Image, ImageOps

JPEG_FORMAT = "JPEG"
EXIF_ORIENTATION = 0x0112  # EXIF tag: 1 upright; 2-8 mirrored and/or rotated
# simplejpeg's names of the colour spaces libjpeg-turbo decodes without converting.
_NATIVE_JPEG_SPACES = {"CMYK": "CMYK", "YCCK": "CMYK", "Gray": "GRAY"}


class CorruptImageError(ValueError):
    """Image data that decodes only with errors (e.g. a JPEG damaged in the middle)."""


def orientation(image: Image.Image) -> int:
    """The EXIF orientation of `image` (1 when it has none)."""
    return int(image.getexif().get(EXIF_ORIENTATION, 1))


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says, without the tag (`image` itself if upright)."""
    if orientation(image) == 1:
        return image
    return ImageOps.exif_transpose(image)


def verify_jpeg(data: bytes) -> None:
    """Decodes JPEG bytes in full and raises `CorruptImageError` on any libjpeg warning ("Corrupt
    JPEG data", "premature end of data segment"), which other decoders fill in with grey."""
    import simplejpeg

    try:
        _, _, space, _ = simplejpeg.decode_jpeg_header(data)
        simplejpeg.decode_jpeg(data, colorspace=_NATIVE_JPEG_SPACES.get(space, "RGB"), strict=True)
    except ValueError as error:
        raise CorruptImageError(str(error)) from None
