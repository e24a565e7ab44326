"""The benchmarks by name: each module reads its files, scores predictions and summarises the scores.

A module has load(data, split, images, **options) -> questions, score(questions, answers, rule=...) and
summary(results); optionally DEFAULT_SPLIT, row_keys(row) (the keys a predictions line is found by, where
LLaVA's layout keys it by more than its question_id) and write_companions(...) (files LLaVA's tools take
with the results: POPE's question file, MMBench's submission sheet)."""

import importlib
from dataclasses import dataclass
from types import ModuleType

NAMES = ("pope", "mme", "mmbench", "textvqa", "scienceqa", "gqa")  # each one's module: evaluation/<name>.py


@dataclass(frozen=True)
class Benchmark:
    name: str

    @property
    def module(self) -> ModuleType:
        """Its reader and scorer, imported on first use (eval.py --help names the benchmarks without them)."""
        return importlib.import_module(f"{__package__}.{self.name}")

    def run_name(self, split: str | None) -> str:
        """The predictions and results files' stem: the benchmark, and the split unless it is the default."""
        default = getattr(self.module, "DEFAULT_SPLIT", None)
        return self.name if split is None or split == default else f"{self.name}_{split}"

    def load(self, data, split=None, images=None, **options):
        return self.module.load(data, split, images, **options)

    def score(self, questions, answers, rule="official"):
        return self.module.score(questions, answers, rule=rule)

    def summary(self, results):
        return self.module.summary(results)

    @property
    def row_keys(self):
        from .runner import default_row_keys

        return getattr(self.module, "row_keys", default_row_keys)

    def write_companions(self, questions, answers, folder, split, data):
        if hasattr(self.module, "write_companions"):
            self.module.write_companions(questions, answers, folder, split, data)


BENCHMARKS = {name: Benchmark(name) for name in NAMES}
