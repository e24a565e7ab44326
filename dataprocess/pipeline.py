"""Convert, merge and validate the configured sources into image_map.json, captions.json and a report."""

import json
import math
import os
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import Pool

import yaml
from PIL import Image
from tqdm import tqdm

import common
from common import IMAGE_MARKER, atomic_file
from common.images import image_entry, open_source
from visual.images import ImageLoadError
from visual.video import is_video, video_info

from .captions import convert_ai_challenger, convert_coco_captions
from .conversations import convert_conversations
from .llava import convert_llava
from .preference import convert_llamafactory_preference, convert_r1v, convert_rlaif_v
from .records import DataError
from .webdataset import convert_webdataset

CAPTION_MODES = ("separate", "alternatives")
EXAMPLES = 5  # example paths or ids kept per problem in the report


@dataclass
class SourceConfig:
    # llava | ai_challenger | coco_captions | conversations | webdataset; post-training: rlaif_v |
    # llamafactory_preference (DPO pairs), r1v (GRPO prompts with a gold answer)
    type: str
    annotations: str  # webdataset: a glob or brace pattern of .tar shards
    image_dir: str | None = None  # every type but webdataset
    name: str | None = None  # default: type:annotation-file-stem
    captions: str = "separate"  # caption sources: separate | alternatives

    def __post_init__(self):
        if self.type not in (*CONVERTERS, *FILE_READERS, "webdataset"):
            raise DataError(f"source type {self.type!r} is not one of "
                            f"{sorted((*CONVERTERS, *FILE_READERS, 'webdataset'))}")
        if self.type != "webdataset" and not self.image_dir:
            raise DataError(f"source {self.annotations}: image_dir is missing")
        if self.captions not in CAPTION_MODES:
            raise DataError(f"captions must be one of {CAPTION_MODES}, got {self.captions!r}")
        self.name = self.name or f"{self.type}:{os.path.splitext(os.path.basename(self.annotations))[0]}"


@dataclass
class ProcessConfig:
    output_dir: str
    sources: list[SourceConfig]
    seed: int = 0  # prompt and marker-position draws for caption sources
    full_decode: bool = False  # decode every pixel, not only the header (slower, catches truncated files)
    workers: int | None = None  # validation processes; default: all cores


def load_config(path: str) -> ProcessConfig:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
        sources = [SourceConfig(**s) for s in raw.pop("sources")]
        return ProcessConfig(sources=sources, **raw)
    except FileNotFoundError:
        raise DataError(f"config file not found: {path}") from None
    except (TypeError, KeyError, AttributeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: not a valid process config ({e})") from None


FILE_READERS = {  # converters that read their own files (JSON Lines, Parquet with embedded images)
    "rlaif_v": convert_rlaif_v, "llamafactory_preference": convert_llamafactory_preference, "r1v": convert_r1v,
}
CONVERTERS = {
    "conversations": lambda data, src, seed: convert_conversations(data, src.annotations, IMAGE_MARKER),
    "llava": lambda data, src, seed: convert_llava(data, src.annotations, IMAGE_MARKER),
    "ai_challenger": lambda data, src, seed: convert_ai_challenger(data, src.annotations, IMAGE_MARKER,
                                                                   src.captions, seed),
    "coco_captions": lambda data, src, seed: convert_coco_captions(data, src.annotations, IMAGE_MARKER,
                                                                   src.captions, seed),
}


def read_json(path: str):
    return common.read_json(path, DataError, "annotation file")


IMAGES_PER_WORKER = 2000  # a header check takes about 0.5 ms: fewer images per process do not repay its start


def pool_size(n_images: int, workers: int | None) -> int:
    """Image-check processes: as many as asked (default: all cores), but no more than the work repays."""
    return max(1, min(workers or os.cpu_count() or 1, math.ceil(n_images / IMAGES_PER_WORKER)))


def check_image(args) -> str | dict:
    """'ok', 'missing' or 'corrupt' of an image reference (a file, or a shard member); for a video (a file or a frame
    folder), its frames and duration, read from the container, when it opens. Runs in a worker process."""
    path, full_decode = args
    if is_video(path):
        if not os.path.exists(path):
            return "missing"
        try:
            info = video_info(path)
        except ImageLoadError:
            return "corrupt"
        return {"frames": info.frames, "duration": round(info.duration, 3)}
    if not os.path.isfile(image_entry(path)["path"]):
        return "missing"
    try:
        with Image.open(open_source(path)) as image:
            image.load() if full_decode else image.verify()
        return "ok"
    except Exception:  # PIL raises many types for bad files; any of them means unusable
        return "corrupt"


class ImageRegistry:
    """One key per distinct file (by real path): `<image_dir name>/<relative path>`, suffixed on clashes."""

    def __init__(self):
        self.key_of: dict[str, str] = {}
        self.path_of: dict[str, str] = {}

    def key(self, image_dir: str, relative: str) -> str:
        base = f"{os.path.basename(os.path.normpath(image_dir))}/{relative}".replace(os.sep, "/")
        return self.member(os.path.realpath(os.path.join(image_dir, relative)), base)

    def member(self, ref: str, base: str) -> str:
        """The key of an image reference (a file's real path, or a shard member's place): `base`, suffixed on
        clashes."""
        if ref not in self.key_of:
            key, n = base, 1
            while key in self.path_of:
                n += 1
                key = f"{base}#{n}"
            self.key_of[ref], self.path_of[key] = key, ref
        return self.key_of[ref]


def write_json_atomic(obj, path: str):
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def process(config: ProcessConfig, progress: bool = True) -> dict:
    registry = ImageRegistry()
    converted = []  # (source, [(sample id, [keys], conversations)])
    for src in config.sources:
        shards = src.type == "webdataset"
        if shards:
            raw = convert_webdataset(src.annotations, IMAGE_MARKER, config.seed)
        elif src.type in FILE_READERS:
            raw = FILE_READERS[src.type](src.annotations, src.image_dir, IMAGE_MARKER)
        else:
            raw = CONVERTERS[src.type](read_json(src.annotations), src, config.seed)
        seen, samples = Counter(), []
        for s in raw:
            seen[s.id] += 1
            sample_id = f"{src.name}/{s.id}" + (f"#dup{seen[s.id]}" if seen[s.id] > 1 else "")
            keys = [registry.member(p, s.id.split("#")[0]) if shards else registry.key(src.image_dir, p)
                    for p in s.images]
            samples.append((sample_id, keys, s.conversations))
        converted.append((src, samples))

    paths = sorted(registry.path_of.values())
    jobs = [(p, config.full_decode) for p in paths]
    workers = pool_size(len(paths), config.workers)
    with Pool(workers) if workers > 1 else nullcontext() as pool:  # one worker: checked in this process
        checked = pool.imap(check_image, jobs, chunksize=64) if pool else map(check_image, jobs)
        results = list(tqdm(checked, total=len(paths), desc="checking images", disable=not progress))
    status = dict(zip(paths, results, strict=True))

    image_map, captions, report = {}, [], {}
    for src, samples in converted:
        bad = {k: status[registry.path_of[k]] for _, keys, _ in samples for k in keys
               if status[registry.path_of[k]] in ("missing", "corrupt")}
        dropped = [sid for sid, keys, _ in samples if any(k in bad for k in keys)]
        for sample_id, keys, conversations in samples:
            if any(k in bad for k in keys):
                continue
            for k in keys:  # a video's entry records its frames and duration
                video = status[registry.path_of[k]]
                image_map[k] = {**image_entry(registry.path_of[k]), **(video if isinstance(video, dict) else {})}
            captions.append({"id": sample_id, "source": src.name, "images": keys, "conversations": conversations})
        missing = sorted(registry.path_of[k] for k, v in bad.items() if v == "missing")
        corrupt = sorted(registry.path_of[k] for k, v in bad.items() if v == "corrupt")
        report[src.name] = {
            "annotations": src.annotations,
            "samples_read": len(samples), "samples_written": len(samples) - len(dropped),
            "samples_dropped": len(dropped), "images_missing": len(missing), "images_corrupt": len(corrupt),
            "examples": {"missing": missing[:EXAMPLES], "corrupt": corrupt[:EXAMPLES], "dropped": dropped[:EXAMPLES]},
        }
    out = config.output_dir
    write_json_atomic(image_map, os.path.join(out, "image_map.json"))
    write_json_atomic(captions, os.path.join(out, "captions.json"))
    write_json_atomic(report, os.path.join(out, "process_report.json"))
    return report
