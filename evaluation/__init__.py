"""Public benchmarks (POPE, MME, MMBench, TextVQA, ScienceQA-IMG, GQA) read as their authors ship them,
answered in LLaVA-1.5's prompt formats and scored with their official metrics."""

from common.lazy import lazy_exports

# each name loads its submodule on first use: eval.py --help lists the benchmarks without PIL or tqdm
__getattr__, __dir__ = lazy_exports(__name__, {
    "BENCHMARKS": ".benchmarks", "Benchmark": ".benchmarks", "BenchmarkDataError": ".data", "Question": ".data",
    "answer_questions": ".runner", "read_predictions": ".runner"})

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataError", "Question", "answer_questions", "read_predictions"]
