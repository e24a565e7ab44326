"""The functions of the tests' lmms-eval tasks (tests/test_lmms_eval.py writes their YAML beside a copy of this file):
held-out colour questions from a local JSON file, answered freely or chosen among the colours."""

from PIL import Image

COLOURS = ["red", "green", "blue", "yellow"]


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return COLOURS


def doc_to_target(doc):
    return COLOURS.index(doc["answer"])


def process_results(doc, results):
    return {"exact_match": float(results[0].strip() == doc["answer"])}
