"""A shop: a folder of product images, checked once before anything is encoded.

Each image file is one product (its name without the suffix is the image id).
Files are taken in sorted name order. What is skipped, and counted:
  * files that are not images by suffix (e.g. notes.txt, .DS_Store);
  * image files PIL cannot decode (truncated, not really an image);
  * byte-identical duplicates: the first name (in sorted order) is kept, the
    others are listed with the name they duplicate.
An empty or unreadable folder, or one with no usable image, is a DataError.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from utils.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class Shop:
    folder: str
    names: list[str]  # image ids (file names without suffix), one per product
    paths: list[str]
    not_images: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    duplicates: dict[str, str] = field(default_factory=dict)  # skipped file -> the kept file with the same bytes

    def notes(self) -> list[str]:
        out = []
        if self.not_images:
            out.append(f"{len(self.not_images)} files that are not images skipped, e.g. {self.not_images[:3]}")
        if self.unreadable:
            out.append(f"{len(self.unreadable)} unreadable images skipped, e.g. {self.unreadable[:3]}")
        if self.duplicates:
            pairs = [f"{Path(a).name} = {Path(b).name}" for a, b in list(self.duplicates.items())[:3]]
            out.append(f"{len(self.duplicates)} duplicate images (same bytes) skipped, one of each kept: "
                       + ", ".join(pairs))
        return out

    def to_dict(self) -> dict:
        return {"folder": self.folder, "products": len(self.names), "not_images": self.not_images,
                "unreadable": self.unreadable, "duplicates": self.duplicates}


def load_shop(folder: str | Path) -> Shop:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--shop {folder}: not a folder; pass a folder of product images")
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as err:
        raise DataError(f"--shop {folder}: cannot list the folder ({err.strerror or err}); check its "
                        "permissions") from None
    if not entries:
        raise DataError(f"--shop {folder}: the folder is empty; put one image per product in it")
    shop = Shop(str(folder), [], [])
    seen: dict[str, str] = {}
    for path in entries:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            shop.not_images.append(str(path))
            continue
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            shop.unreadable.append(str(path))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            shop.duplicates[str(path)] = seen[digest]
            continue
        seen[digest] = str(path)
        shop.names.append(path.stem)
        shop.paths.append(str(path))
    if not shop.paths:
        raise DataError(f"--shop {folder}: no readable product image among its {len(entries)} files "
                        f"({len(shop.not_images)} not images, {len(shop.unreadable)} unreadable); "
                        f"image suffixes: {', '.join(IMAGE_SUFFIXES)}")
    if len(set(shop.names)) != len(shop.names):
        raise DataError(f"--shop {folder}: two images share a name with different suffixes; rename one so "
                        "every product has its own id")
    return shop
