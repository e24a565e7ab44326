"""Image references: how image_map.json's entries name an image, as one string.

A reference is a file's path, or `tar-member:OFFSET:SIZE:SHARD` for SIZE bytes at byte OFFSET of the tar file SHARD
(a webdataset shard, read in place with no unpacking). image_map.json writes the latter as {"path": SHARD, "offset":
OFFSET, "size": SIZE}: `image_ref` turns an entry into its reference, `image_entry` back.
"""

import io

MEMBER = "tar-member:"


class MarkerMismatch(ValueError):
    """A sample's image marker stands where its file is a video, or its video marker where the file is an image."""


def image_ref(entry: dict) -> str:
    """The reference of an image_map.json entry."""
    if "offset" in entry:
        return f"{MEMBER}{int(entry['offset'])}:{int(entry['size'])}:{entry['path']}"
    return entry["path"]


def image_entry(ref: str) -> dict:
    """The image_map.json entry of a reference (the inverse of image_ref)."""
    if ref.startswith(MEMBER):
        offset, size, path = ref[len(MEMBER):].split(":", 2)
        return {"path": path, "offset": int(offset), "size": int(size)}
    return {"path": ref}


def open_source(ref: str):
    """What PIL opens for a reference: the path, or the member's bytes (a short read means a truncated shard)."""
    if not ref.startswith(MEMBER):
        return ref
    entry = image_entry(ref)
    with open(entry["path"], "rb") as f:
        f.seek(entry["offset"])
        data = f.read(entry["size"])
    if len(data) != entry["size"]:
        raise OSError(f"the shard ends {entry['size'] - len(data)} bytes into this member")
    return io.BytesIO(data)


def size_rows(rows: list) -> list[tuple]:
    """Image-size rows made one width for a tensor: (height, width) of images, (height, width, frames) of videos; when
    any row has frames, the images' rows get 0 (model/anyres.py's ImageInputs reads them)."""
    width = max((len(row) for row in rows), default=2)
    return [tuple(row) + (0,) * (width - len(row)) for row in rows]
