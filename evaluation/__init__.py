"""Public benchmarks (POPE, MME, MMBench, TextVQA, ScienceQA-IMG, GQA) read as their authors ship them,
answered in LLaVA-1.5's prompt formats and scored with their official metrics."""

from .benchmarks import BENCHMARKS, Benchmark
from .data import BenchmarkDataError, Question
from .runner import answer_questions, read_predictions

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataError", "Question", "answer_questions", "read_predictions"]
