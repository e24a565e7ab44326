"""Image references: how image_map.json's entries name an image, as one string.

A reference is a file's path, or `tar-member:OFFSET:SIZE:SHARD` for SIZE bytes at byte OFFSET of the tar file SHARD
(a webdataset shard, read in place with no unpacking). image_map.json writes the latter as {"path": SHARD, "offset":
OFFSET, "size": SIZE}: `image_ref` turns an entry into its reference, `image_entry` back.
"""

import io

MEMBER = "tar-member:"


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
