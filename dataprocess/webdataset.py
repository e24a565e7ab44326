"""Webdataset shards (img2dataset's output: CC3M, CC12M, LAION, DataComp) -> one caption sample per image, with
the image read in place from its shard: no unpacking.

`annotations` is a glob or brace pattern of .tar shards (`data/cc3m/{00000..00331}.tar`). Members are grouped into
samples by webdataset's own key rule (the name up to the first dot of its last path part); a sample needs an image
(jpg, jpeg, png, webp) and a caption: `txt`, or `json` with a "caption" field (img2dataset writes both). Each image
becomes a reference to its bytes in the shard (visual/images.py): image_map.json records it as {"path": shard,
"offset": ..., "size": ...}, and training reads those bytes with one seek, so the samples shuffle, shard across
processes and resume exactly as any other source's do, and a corrupt member is a bad sample under the usual rules.
A shard cut short keeps the members before the cut.
"""

import glob
import json
import os
import tarfile

from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from common.images import image_ref

from .captions import EN_PROMPTS, caption_samples
from .records import DataError, RawSample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def shard_paths(pattern: str) -> list[str]:
    """The shards a brace and/or glob pattern names, in order; DataError when there are none."""
    paths = []
    for part in braceexpand(pattern):
        paths += sorted(glob.glob(part)) if glob.has_magic(part) else [part]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing or not paths:
        raise DataError(f"webdataset shard not found: {missing[0] if missing else pattern}")
    return paths


def read_shard(path: str) -> dict[str, dict]:
    """{sample key: {extension: TarInfo}} of one shard's members, in order; those before a truncation only."""
    groups: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is not None:
                    groups.setdefault(key, {})[ext.lower()] = member
    except tarfile.ReadError as e:
        if not groups:
            raise DataError(f"{path}: not a tar shard ({e})") from None
    return groups


def caption_of(tar, parts: dict) -> str | None:
    if "txt" in parts:
        return tar.extractfile(parts["txt"]).read().decode("utf-8", "replace").strip() or None
    if "json" in parts:
        try:
            caption = json.loads(tar.extractfile(parts["json"]).read()).get("caption")
        except (ValueError, AttributeError):
            return None
        return " ".join(str(caption).split()) or None if caption else None
    return None


def convert_webdataset(pattern: str, marker: str, seed: int) -> list[RawSample]:
    """One sample per key with an image and a caption; RawSample.images holds the image's reference."""
    samples = []
    for path in shard_paths(pattern):
        stem = os.path.splitext(os.path.basename(path))[0]
        groups = read_shard(path)
        with tarfile.open(path, "r:") as tar:
            for key, parts in groups.items():
                ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
                if ext is None:
                    continue
                try:
                    caption = caption_of(tar, parts)
                except (tarfile.ReadError, OSError):  # the caption member lies past a truncation
                    caption = None
                if caption is None:
                    continue
                image = parts[ext]
                ref = image_ref({"path": os.path.abspath(path), "offset": image.offset_data, "size": image.size})
                samples += caption_samples(f"{stem}/{key}", ref, [caption], EN_PROMPTS, marker, "separate", seed)
    return samples
