"""Data mixtures: several processed sources, each drawn by a rule, in one training set (--data_mixture mix.yaml).

    sources:
      - path: data/llava_665k            # a process_image.py output folder (image_map.json + captions.json)
        sampling: random:50%             # all | first:N | end:N | random:N | random:P%   (default: all)
      - image_map: data/cc3m/image_map.json
        captions: data/cc3m/captions.json
        sampling: first:100000
        weight: 2                        # the drawn samples twice over (0.5: half of them, drawn at random)
        name: cc3m                       # default: the folder or captions file

Paths are relative to the current folder, like every path flag. The draw is a pure function of the seed and the
sources: every process, and a resumed run, draws the same samples, and the Trainer's sampler shuffles and resumes
them as it does one source. Each source is read through its sample store (common/store.py), whose exact lengths
serve packing and length grouping.
"""

import os
import random
import re
from dataclasses import dataclass

import numpy as np
import yaml

from common.store import open_samples

RULE = re.compile(r"^(all|first:(\d+)|end:(\d+)|random:(\d+)|random:(\d+(?:\.\d+)?)%)$")


@dataclass
class Source:
    name: str
    image_map: str
    captions: str
    sampling: str = "all"
    weight: float = 1.0


def draw(n: int, sampling: str, weight: float, rng: random.Random) -> list[int]:
    """The indices (of n samples) that a rule and a weight draw, in file order for each copy."""
    m = RULE.match(sampling)
    if m is None:
        raise ValueError(f"sampling {sampling!r} is not one of all, first:N, end:N, random:N, random:P%")
    if m.group(2):
        picked = list(range(min(int(m.group(2)), n)))
    elif m.group(3):
        picked = list(range(max(0, n - int(m.group(3))), n))
    elif m.group(4) or m.group(5):
        k = int(m.group(4)) if m.group(4) else round(n * float(m.group(5)) / 100)
        picked = sorted(rng.sample(range(n), min(k, n)))
    else:
        picked = list(range(n))
    whole, part = divmod(weight, 1)
    extra = sorted(rng.sample(picked, round(len(picked) * part)))
    return picked * int(whole) + extra


def read_mixture(path: str) -> list[Source]:
    """The sources of a mixture file; a bad entry is one sentence naming the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            root = yaml.compose(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"mixture file not found: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark else path
        raise ValueError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or 'unreadable'})") from None
    entries = None
    if isinstance(root, yaml.MappingNode):
        entries = next((v for k, v in root.value if k.value == "sources"), None)
    if not isinstance(entries, yaml.SequenceNode) or not entries.value:
        raise ValueError(f"{path}: expected a list of sources under 'sources:'")
    sources, names = [], set()
    for node in entries.value:
        where = f"{path} line {node.start_mark.line + 1}"
        entry = yaml.safe_load(yaml.serialize(node))
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: a source is a mapping (path: ... or image_map: ... and captions: ...)")
        unknown = set(entry) - {"path", "image_map", "captions", "sampling", "weight", "name"}
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        if "path" in entry:
            base = str(entry["path"])
            image_map, captions = os.path.join(base, "image_map.json"), os.path.join(base, "captions.json")
        elif "image_map" in entry and "captions" in entry:
            image_map, captions = str(entry["image_map"]), str(entry["captions"])
        else:
            raise ValueError(f"{where}: a source needs 'path' (a processed folder) or 'image_map' and 'captions'")
        for file in (image_map, captions):
            if not os.path.isfile(file):
                raise ValueError(f"{where}: {file} not found (run process_image.py first)")
        name = str(entry.get("name") or entry.get("path") or os.path.splitext(str(entry["captions"]))[0])
        if name in names:
            raise ValueError(f"{where}: a second source named {name!r} (give it a 'name')")
        names.add(name)
        sampling = str(entry.get("sampling", "all")).replace(" ", "")
        if RULE.match(sampling) is None:
            raise ValueError(f"{where}: sampling {sampling!r} is not one of all, first:N, end:N, random:N, random:P%")
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise ValueError(f"{where}: weight must be a number above 0, not {weight!r}")
        sources.append(Source(name, image_map, captions, sampling, float(weight)))
    return sources


class Mixture:
    """The drawn samples of several sources, source after source (the Trainer's sampler shuffles them)."""

    def __init__(self, sources: list[Source], seed: int = 0, store: bool = True, progress: bool = True):
        self.sources = sources
        self.parts = [open_samples(s.image_map, s.captions, store, progress) for s in sources]
        self.indices = [np.asarray(draw(len(p), s.sampling, s.weight, random.Random(f"{seed}:{s.name}")),
                                   dtype=np.int64) for s, p in zip(sources, self.parts, strict=True)]
        self.offsets = np.cumsum([0] + [len(i) for i in self.indices])
        if self.offsets[-1] == 0:
            raise ValueError("the mixture draws no sample")

    @classmethod
    def read(cls, path: str, seed: int = 0, store: bool = True, progress: bool = True) -> "Mixture":
        return cls(read_mixture(path), seed, store, progress)

    def __len__(self):
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(source, index within the source) of a mixture index."""
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return k, int(self.indices[k][index - self.offsets[k]])

    def __getitem__(self, index: int) -> dict:
        k, i = self.locate(index)
        return self.parts[k][i]

    def paths(self, index: int) -> list[str]:
        k, i = self.locate(index)
        return self.parts[k].paths(i)

    def lengths(self, key: str, measure, progress: bool = True) -> np.ndarray:
        return np.concatenate([part.lengths(key, measure, progress)[idx]
                               for part, idx in zip(self.parts, self.indices, strict=True)])

    def summary(self) -> str:
        """The table printed at start: per source, the samples available and drawn, and its share of the mixture."""
        rows = [(s.name, s.sampling + (f" x{s.weight:g}" if s.weight != 1 else ""), len(p), len(i))
                for s, p, i in zip(self.sources, self.parts, self.indices, strict=True)]
        width = max(len("source"), *(len(r[0]) for r in rows))
        lines = [f"{'source':{width}}  {'sampling':>16}  {'available':>10}  {'drawn':>10}  {'share':>6}"]
        lines += [f"{name:{width}}  {rule:>16}  {n:>10}  {k:>10}  {k / len(self):>6.1%}" for name, rule, n, k in rows]
        lines.append(f"{'total':{width}}  {'':>16}  {sum(r[2] for r in rows):>10}  {len(self):>10}  {1:>6.1%}")
        return "\n".join(lines)
