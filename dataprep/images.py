"""Image data for the ingest, clean and preprocess stages: sources, the pack format, decoding and resizing.

Between stages, images travel in a *pack*: a directory holding `images.bin` (the encoded images, back to back)
and `index.jsonl` (one row per image: byte offset and length, class label or null, source, sha256 of the bytes),
plus `classes.json` (class names, by label). Ingest stores the bytes as read, undecoded, so that clean is where a
corrupt file is found, dropped and counted. Clean re-encodes every kept image as PNG in one colour mode.

Preprocess turns the clean pack into one memory-mappable uint8 array per split, (N, C, S, S), plus int64 labels;
models see `x / 127.5 - 1` (see `evaluation.image_metrics.to_unit`).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from config.catalog import PACK_BLOBS, PACK_CLASSES, PACK_INDEX
from runtime.errors import DataError
from runtime.io import sha256_bytes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
ARRAY_SUFFIXES = {".npy", ".npz"}
EMBEDDED_IMAGES = {"embedded:digits"}


@dataclass(frozen=True)
class RawImage:
    data: bytes  # encoded image file bytes, as read
    label: str | None  # class name, or None when the source has no classes
    source: str


# ---------------------------------------------------------------------------------------------------- packs


def write_pack(directory: Path, images: list[bytes], labels: list[int | None], sources: list[str],
               classes: list[str]) -> str:
    """Write images (encoded bytes) with their labels into a pack in `directory`; return the index's sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    rows, offset = [], 0
    with open(directory / PACK_BLOBS, "wb") as fh:
        for data, label, source in zip(images, labels, sources, strict=True):
            fh.write(data)
            rows.append({"offset": offset, "length": len(data), "label": label, "source": source,
                         "sha256": sha256_bytes(data)})
            offset += len(data)
    index = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    (directory / PACK_INDEX).write_text(index, encoding="utf-8")
    (directory / PACK_CLASSES).write_text(json.dumps(classes) + "\n", encoding="utf-8")
    return sha256_bytes(index.encode())


def read_pack(directory: Path) -> tuple[list[dict], list[str], Iterator[bytes]]:
    """Return a pack's index rows, class names and an iterator over the encoded images, in index order."""
    try:
        rows = [json.loads(line) for line in (directory / PACK_INDEX).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        classes = json.loads((directory / PACK_CLASSES).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"input {exc.filename} does not exist: run the stages before this one first "
                        "(`dvc repro`)") from None

    def blobs() -> Iterator[bytes]:
        with open(directory / PACK_BLOBS, "rb") as fh:
            for row in rows:
                fh.seek(row["offset"])
                yield fh.read(row["length"])

    return rows, classes, blobs()


# ---------------------------------------------------------------------------------------------------- encoding


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode a uint8 array (H, W) or (H, W, 3) as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def decode(data: bytes):
    """Decode an image fully (not lazily); raise DataError if it is corrupt, truncated or not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return ImageOps.exif_transpose(img)  # a phone photo stored sideways with an EXIF orientation: upright
    except Image.DecompressionBombError as exc:  # a tiny file that decodes to billions of pixels
        raise DataError(f"refused image: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"undecodable image ({type(exc).__name__}: {exc})") from None


def has_colour(img) -> bool:
    """Whether an image carries colour: some pixel's R, G and B differ once converted to RGB."""
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))


def to_mode(img, mode: str):
    """Convert to L or RGB; transparency is flattened onto white (not black, which `convert` would give)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I", "I;16", "F"):  # 16-bit or float grayscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255 + 0.5, 0, 255).astype(np.uint8))
    return img.convert(mode)


def square_resize(img, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to size x size (antialiased bicubic); return uint8 (C, size, size)."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


# ---------------------------------------------------------------------------------------------------- sources


def read_digits() -> tuple[list[RawImage], bytes]:
    """scikit-learn's handwritten digits (1,797 8x8 grayscale images, labels 0-9), shipped inside its wheel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # values 0..16 -> 0..255
    images = [RawImage(encode_png(p), str(int(y)), "embedded:digits") for p, y in zip(pixels, digits.target)]
    return images, pixels.tobytes() + digits.target.astype(np.int64).tobytes()


def _array_images(arr: np.ndarray, where: str) -> list[np.ndarray]:
    """Split an array of images (N, H, W) or (N, H, W, C) into uint8 (H, W[, C]) images."""
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (3, 4))):
        raise DataError(f"{where}: expected an array of shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4; "
                        f"got {arr.shape}")
    if arr.dtype == np.uint8:
        return list(arr)
    if np.issubdtype(arr.dtype, np.floating) and np.nanmin(arr) >= 0 and np.nanmax(arr) <= 1:
        return list(np.round(arr * 255).astype(np.uint8))
    raise DataError(f"{where}: expected uint8 pixels or floats in [0, 1]; got {arr.dtype} in "
                    f"[{arr.min()}, {arr.max()}]")


def read_array_file(path: Path, image_field: str, label_field: str, source: str) -> list[RawImage]:
    """Images from a .npy array, or a .npz holding `image_field` (and optionally `label_field`); never unpickles."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable numpy array file ({exc})") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if image_field not in loaded.files:
                raise DataError(f"{path}: no array {image_field!r}; arrays: {', '.join(loaded.files)}")
            arr = loaded[image_field]
            labels = loaded[label_field] if label_field in loaded.files else None
    else:
        arr = loaded
    images = _array_images(arr, str(path))
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{path}: {len(labels)} labels for {len(images)} images")
    return [RawImage(encode_png(img), None if labels is None else str(labels[i].item()), source)
            for i, img in enumerate(images)]


def read_image_folder(path: Path, pattern: str) -> list[RawImage]:
    """Every image file under `path`; when every image sits in a subfolder, the first subfolder is its class."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"source {pattern!r}: directory has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    labelled = all(len(f.relative_to(path).parts) > 1 for f in files)
    if labelled:
        used = {f.relative_to(path).parts[0] for f in files}
        for folder in sorted(p.name for p in path.iterdir() if p.is_dir() and p.name not in used):
            log.warning("ingest: class folder %s has no image files: that class is left out",
                        f"{pattern.rstrip('/')}/{folder}")
    out = []
    for f in files:
        data = f.read_bytes()
        rel = f.relative_to(path)
        out.append(RawImage(data, rel.parts[0] if labelled else None, f"{pattern.rstrip('/')}/{rel.as_posix()}"))
    return out


def read_hf_images(spec: str, image_field: str, label_field: str) -> tuple[list[RawImage], bytes]:
    """A Hugging Face image dataset: a hub id (online) or a directory written by `Dataset.save_to_disk`."""
    from dataprep.sources import load_hf_dataset

    ds = load_hf_dataset(spec, image_field)
    names = None
    if label_field in ds.column_names:
        feature = ds.features[label_field]
        names = getattr(feature, "names", None)
    out = []
    for row in ds:
        img = row[image_field]
        if not hasattr(img, "save"):
            raise DataError(f"source 'hf:{spec}': column {image_field!r} does not hold images")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        label = row.get(label_field)
        label = None if label is None else (names[label] if names else str(label))
        out.append(RawImage(buf.getvalue(), label, f"hf:{spec}"))
    return out, b"".join(r.data for r in out)


def read_image_source(source: str, root: Path, image_field: str, label_field: str) -> tuple[list[RawImage], bytes]:
    """Read one configured image source; return its images and the bytes its digest is computed over."""
    if source.startswith("embedded:"):
        if source not in EMBEDDED_IMAGES:
            raise DataError(f"source {source!r}: unknown embedded image set; allowed: "
                            f"{', '.join(sorted(EMBEDDED_IMAGES))}")
        return read_digits()
    if source.startswith("hf:"):
        return read_hf_images(source[3:], image_field, label_field)
    if source.startswith(("http://", "https://")):
        raise DataError(f"source {source!r}: image sources are local folders, image or array files, "
                        "embedded:digits or hf:<dataset>; download archives first")
    path = Path(source) if Path(source).is_absolute() else root / source
    if path.is_dir():
        images = read_image_folder(path, source)
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            images = read_array_file(path, image_field, label_field, source)
        elif suffix in IMAGE_SUFFIXES:
            images = [RawImage(path.read_bytes(), None, source)]
        else:
            raise DataError(f"source {source!r}: unsupported file type {suffix!r}; use an image "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}), .npy or .npz")
    else:
        raise DataError(f"source {source!r}: no such file or directory")
    return images, b"".join(r.data for r in images)


def label_ids(images: list[RawImage]) -> tuple[list[int | None], list[str]]:
    """Map class names to ids (sorted names; numeric names sort numerically); refuse a mix of labelled and
    unlabelled images."""
    names = {r.label for r in images}
    if None in names and len(names) > 1:
        raise DataError("some image sources have class labels (subfolders or a label array) and others do not; "
                        "label all of them or none")
    if names == {None}:
        return [None] * len(images), []
    ordered = sorted(names, key=lambda n: (0, int(n), "") if n.lstrip("-").isdigit() else (1, 0, n))
    index = {n: i for i, n in enumerate(ordered)}
    return [index[r.label] for r in images], ordered
