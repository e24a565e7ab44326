"""Speed and memory benchmarks against transformers' Llava (results in BENCHMARKS.md)."""
