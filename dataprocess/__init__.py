"""Converters from public datasets (LLaVA, COCO, AI Challenger) to the project's data schema."""
