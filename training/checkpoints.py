"""Checkpoint folders that are complete or absent.

Each `checkpoint-N/` is written into a hidden sibling (`.checkpoint-N.partial/`) and renamed into place
once every process has written its part, with a manifest of every file and its size written last. A kill
mid-save leaves only the hidden folder, which resume never looks at. A `checkpoint-N/` that is incomplete
all the same (copied in part, truncated on disk, written by an older version) is passed over by
`latest_complete_checkpoint` with one line saying why, and never deleted here.
"""

import json
import os
import re

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

MANIFEST = "checkpoint_manifest.json"
CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Written by our save_model into every checkpoint, whatever the trainable parts (see model/checkpoint.py).
REQUIRED = (TRAINER_STATE_NAME, "vlm_config.json", "projector.safetensors")


def staging_folder(final: str) -> str:
    parent, name = os.path.split(final)
    return os.path.join(parent, f".{name}.partial")


def file_sizes(folder: str) -> dict[str, int]:
    sizes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            sizes[os.path.relpath(path, folder)] = os.path.getsize(path)
    return sizes


def write_manifest(folder: str):
    sizes = file_sizes(folder)
    sizes.pop(MANIFEST, None)
    tmp = os.path.join(folder, f".{MANIFEST}.tmp")
    with open(tmp, "w") as f:
        json.dump({"files": sizes}, f, indent=0, sort_keys=True)
    os.replace(tmp, os.path.join(folder, MANIFEST))


def publish(staging: str, final: str) -> str | None:
    """Renames the finished staging folder to `final` (main process only). An incomplete folder already
    there is moved aside, not deleted; returns where it went."""
    write_manifest(staging)
    moved = None
    if os.path.exists(final):
        parent, name = os.path.split(final)
        moved, n = os.path.join(parent, f"incomplete-{name}"), 1
        while os.path.exists(moved):
            n += 1
            moved = os.path.join(parent, f"incomplete-{name}-{n}")
        os.rename(final, moved)
    os.rename(staging, final)
    return moved


def incomplete_reason(folder: str) -> str | None:
    """Why `folder` cannot be resumed from, or None when it is complete."""
    manifest = os.path.join(folder, MANIFEST)
    if os.path.isfile(manifest):
        try:
            with open(manifest) as f:
                expected = json.load(f)["files"]
        except (OSError, ValueError, KeyError):
            return f"{MANIFEST} is unreadable"
        found = file_sizes(folder)
        for name, size in sorted(expected.items()):
            if name not in found:
                return f"{name} is missing"
            if found[name] != size:
                return f"{name} has {found[name]} bytes, not {size}"
    for name in REQUIRED:  # folders from before manifests: the files every checkpoint has
        if not os.path.isfile(os.path.join(folder, name)):
            return f"{name} is missing"
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME)) as f:
            json.load(f)
    except (OSError, ValueError):
        return f"{TRAINER_STATE_NAME} is unreadable"
    return None


def latest_complete_checkpoint(output_dir: str) -> tuple[str | None, list[str]]:
    """The newest complete checkpoint-N/ of a run folder, and one 'name (why)' per newer one passed over."""
    if not os.path.isdir(output_dir):
        return None, []
    steps = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                    if (m := CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name))),
                   reverse=True)
    passed_over = []
    for _, name in steps:
        path = os.path.join(output_dir, name)
        why = incomplete_reason(path)
        if why is None:
            return path, passed_over
        passed_over.append(f"{name} ({why})")
    return None, passed_over
