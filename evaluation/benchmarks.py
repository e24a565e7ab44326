"""The benchmarks by name: each module reads its files, scores predictions and summarises the scores."""

from dataclasses import dataclass
from types import ModuleType

from . import gqa, mmbench, mme, pope, scienceqa, textvqa


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: ModuleType  # load(data, split, images) -> questions; score(questions, answers); summary(results)

    def parts(self, data, split=None) -> list[str | None]:
        """What is answered and scored apart: POPE's three splits; one part elsewhere."""
        return self.module.parts(data, split) if hasattr(self.module, "parts") else [split]

    def load(self, data, split=None, images=None):
        return self.module.load(data, split, images)

    def score(self, questions, answers):
        return self.module.score(questions, answers)

    def summary(self, results):
        return self.module.summary(results)


BENCHMARKS = {b.name: b for b in (Benchmark("pope", pope), Benchmark("mme", mme), Benchmark("mmbench", mmbench),
                                  Benchmark("textvqa", textvqa), Benchmark("scienceqa", scienceqa),
                                  Benchmark("gqa", gqa))}
