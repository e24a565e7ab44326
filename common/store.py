"""Where the samples come from: captions.json itself (JsonSamples), or its sample store (SampleStore), one shared,
memory-mapped copy of the same samples, and the exact token lengths, computed once.

captions.json stays the readable file of record. Its store is the folder `captions.store/` beside it: an Arrow table
written by the `datasets` library (save_to_disk), one row per sample, in the file's order, holding the sample exactly
as captions.json holds it (`record`, its JSON text), its `id` and `source`, and its images' references (`paths`,
resolved through image_map.json). Every DataLoader worker and every process of a node reads the one table through
the page cache, so 665k samples cost each process a few MB, not 3 GB of Python objects each (docs/data.md).
`store.json` in the folder records the schema version and the size and modification time of the two JSON files it
was built from: a store that no longer matches them, or of another schema, is rebuilt, with one line saying why.

The build runs once per folder: the first process to take the folder's lock builds, in a temporary folder renamed
into place at the end (a killed build leaves no store), and the others wait on the lock, not on a collective, so
no NCCL timeout runs out meanwhile. `process_image.py` builds the store as its last step.

Exact token lengths (image tokens included) are cached beside the table as `lengths-<key>.npy`, keyed by the
processor's fingerprint (tokenizer, chat template, system prompt, image token and count, aspect mode), under the
same lock: packing and length grouping plan with them.
"""

import json
import os
import shutil
import sys
import tempfile
from multiprocessing import get_context

import numpy as np
from filelock import FileLock
from tqdm import tqdm

from .files import read_json
from .images import image_ref

SCHEMA = 1  # bump when the table's columns change: older stores are rebuilt
STORE_SUFFIX = ".store"
PARALLEL_LENGTHS = 20000  # samples from which exact lengths are computed in several processes


def read_samples(image_map: str, captions: str) -> tuple[dict, list]:
    """image_map.json as {key: reference} and captions.json's samples; ValueError when they do not go together."""
    refs = {key: image_ref(entry) for key, entry in read_json(image_map).items()}
    samples = read_json(captions)
    if not samples:
        raise ValueError(f"{captions} holds no samples")
    for sample in samples:
        unknown = [k for k in sample["images"] if k not in refs]
        if unknown:
            raise ValueError(f"sample {sample['id']} in {captions} uses image {unknown[0]!r}, which {image_map} does "
                             f"not list")
    return refs, samples


class Samples:
    """What JsonSamples and SampleStore share: samples by index, their image references, and exact lengths (cached
    where there is a store folder)."""

    folder: str | None = None

    def lengths(self, key: str, measure, progress: bool = True) -> np.ndarray:
        """measure(sample, paths) of every sample: cached in the store under `key`."""
        return cached_lengths(self.folder, key, len(self), lambda i: measure(self[i], self.paths(i)), progress)


class JsonSamples(Samples):
    """The samples as captions.json holds them, parsed into this process: the reference path (--data_store false)."""

    def __init__(self, image_map: str, captions: str):
        self.refs, self.samples = read_samples(image_map, captions)  # no folder: lengths are not cached

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]

    def paths(self, index: int) -> list[str]:
        return [self.refs[key] for key in self.samples[index]["images"]]


def store_folder(captions: str) -> str:
    return os.path.splitext(os.path.abspath(captions))[0] + STORE_SUFFIX


def _stamp(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stale_reason(image_map: str, captions: str) -> str | None:
    """Why the store of these files cannot be used as it is (None: it can)."""
    folder = store_folder(captions)
    try:
        with open(os.path.join(folder, "store.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return "there is none yet"
    if meta.get("schema") != SCHEMA:
        return f"it has schema version {meta.get('schema')}, this code reads {SCHEMA}"
    for name, path in (("captions", captions), ("image_map", image_map)):
        if meta.get(name) != _stamp(path):
            return f"{os.path.basename(path)} changed after it was built"
    return None


def build_store(image_map: str, captions: str, progress: bool = True) -> str:
    """Builds (or rebuilds) the store of these files unless a fresh one is there; returns its folder."""
    folder = store_folder(captions)
    with FileLock(folder + ".lock"):
        why = stale_reason(image_map, captions)
        if why is None:
            return folder
        print(f"building the sample store {folder} ({why})", file=sys.stderr)
        stamps = {"captions": _stamp(captions), "image_map": _stamp(image_map)}  # before reading: a later edit shows
        refs, samples = read_samples(image_map, captions)
        columns = {"id": [], "source": [], "paths": [], "record": []}
        for sample in tqdm(samples, desc="sample store", unit="sample", disable=not progress, mininterval=2):
            columns["id"].append(str(sample["id"]))
            columns["source"].append(str(sample.get("source", "")))
            columns["paths"].append([refs[key] for key in sample["images"]])
            columns["record"].append(json.dumps(sample, ensure_ascii=False))
        del samples
        import datasets  # here, not at import: a second or two that only building and reading a store pay

        if not progress:
            datasets.disable_progress_bars()

        table = datasets.Dataset.from_dict(columns, features=datasets.Features({
            "id": datasets.Value("string"), "source": datasets.Value("string"),
            "paths": datasets.Sequence(datasets.Value("string")), "record": datasets.Value("string")}))
        parent = os.path.dirname(folder)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
        try:
            table.save_to_disk(tmp, max_shard_size="1GB")
            with open(os.path.join(tmp, "store.json"), "w", encoding="utf-8") as f:
                json.dump({"schema": SCHEMA, "samples": len(table), **stamps}, f)
            if os.path.exists(folder):
                old = f"{tmp}.old"
                os.rename(folder, old)
                os.rename(tmp, folder)
                shutil.rmtree(old)
            else:
                os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder


class SampleStore(Samples):
    """The samples of a store, by index, each as captions.json holds it."""

    def __init__(self, folder: str):
        import datasets

        self.folder = folder
        self.table = datasets.load_from_disk(folder)  # memory-mapped Arrow files
        arrow = self.table.data.table  # read through pyarrow: about 2 us a row, against 50 through datasets' rows
        self.records, self.path_lists = arrow.column("record"), arrow.column("paths")

    @classmethod
    def of(cls, image_map: str, captions: str, progress: bool = True) -> "SampleStore":
        """The store of these files, built or rebuilt first when needed."""
        return cls(build_store(image_map, captions, progress))

    def __len__(self):
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        return json.loads(self.records[int(index)].as_py())

    def paths(self, index: int) -> list[str]:
        return self.path_lists[int(index)].as_py()


def open_samples(image_map: str, captions: str, store: bool = True, progress: bool = True):
    return SampleStore.of(image_map, captions, progress) if store else JsonSamples(image_map, captions)


_MEASURE = None  # the function a lengths worker process applies (set before the fork)


def _measure(indices: range) -> list[int]:
    return [_MEASURE(i) for i in indices]


def compute_lengths(n: int, measure, progress: bool = True) -> np.ndarray:
    """measure(i) for i < n, in forked processes (one per core) when n is large."""
    global _MEASURE
    workers = min(os.cpu_count() or 1, 16) if n >= PARALLEL_LENGTHS and hasattr(os, "fork") else 1
    chunks = [range(k, min(k + 2000, n)) for k in range(0, n, 2000)]
    bar = tqdm(total=n, desc="token lengths", unit="sample", disable=not progress, mininterval=2)
    out = []
    if workers == 1:
        for chunk in chunks:
            out += [measure(i) for i in chunk]
            bar.update(len(chunk))
    else:
        _MEASURE = measure
        try:
            with get_context("fork").Pool(workers) as pool:
                for part in pool.imap(_measure, chunks):
                    out += part
                    bar.update(len(part))
        finally:
            _MEASURE = None
    bar.close()
    return np.asarray(out, dtype=np.int32)


def cached_lengths(folder: str | None, key: str, n: int, measure, progress: bool = True) -> np.ndarray:
    """The exact lengths of a store's samples for the processor `key`: read from `lengths-<key>.npy`, or computed
    once (by the first process to take the lock) and written there atomically. Without a store: computed here."""
    if folder is None:
        return compute_lengths(n, measure, progress)
    path = os.path.join(folder, f"lengths-{key}.npy")
    with FileLock(folder + ".lock"):
        if not os.path.exists(path):
            lengths = compute_lengths(n, measure, progress)
            tmp = path + ".tmp.npy"
            np.save(tmp, lengths)
            os.replace(tmp, path)
    lengths = np.load(path)
    if len(lengths) != n:
        raise ValueError(f"{path} holds {len(lengths)} lengths for {n} samples: delete it to recompute")
    return lengths
