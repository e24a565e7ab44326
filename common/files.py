"""Atomic writes: a crash, a kill or a full disk never leaves half a file where a good one was."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_file(path: str):
    """Yields a temporary path beside `path`, with the same extension (image and plot writers go by it),
    and renames it to `path` once the block has written it: a crash never leaves half a file there."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp{os.path.splitext(name)[1]}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_folder(folder: str):
    """Yields a temporary sibling folder. Once everything is written there, its entries replace those of
    `folder` by renames (other entries of `folder`, such as the Trainer's checkpoint-N/, stay), so a
    crash or a full disk mid-save never leaves a half-written file where a good one was."""
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(tmp):
        src, dst = os.path.join(tmp, name), os.path.join(folder, name)
        if os.path.isdir(dst):
            old = f"{tmp}.old-{name}"
            os.rename(dst, old)
            os.rename(src, dst)
            shutil.rmtree(old)
        else:
            os.replace(src, dst)
    os.rmdir(tmp)


def read_json(path: str, error: type[Exception] = ValueError, kind: str = "file"):
    """json.load of a file; a missing or malformed one raises `error` with one sentence naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{kind} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
