"""Public benchmarks: each reader on hand-made fixtures in the published format (tests/fixtures/benchmarks/),
each metric against values computed by hand, fixed prediction files scored without a model, and one run
per benchmark with a tiny checkpoint (answers, LLaVA-layout predictions, resume)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import save_tiny_clip, save_tiny_qwen

import eval as eval_cli
from evaluation import BENCHMARKS, BenchmarkDataError
from evaluation.answers import (
    mmbench_letter,
    mme_yes_no,
    normalize_vqa_answer,
    option_letter,
    pope_yes_no,
    scienceqa_letter,
    vqa_accuracy,
)
from evaluation.prompts import MULTIPLE_CHOICE, SHORT_ANSWER
from model import VisionLanguageModel, VLMConfig, save_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
DATA = {"pope": FIXTURES / "pope", "mme": FIXTURES / "mme", "mmbench": FIXTURES / "mmbench" / "MMBench_DEV_EN.tsv",
        "textvqa": FIXTURES / "textvqa" / "TextVQA_0.5.1_val.json", "scienceqa": FIXTURES / "scienceqa",
        "gqa": FIXTURES / "gqa" / "testdev_balanced_questions.json"}


def score_file(capsys, name, predictions, tmp_path, split=None, rule=None) -> dict:
    """eval.py's score-only path: no model, a fixed predictions file (this project's earlier layout)."""
    copy = tmp_path / f"{name}_{split or 'all'}_predictions.jsonl"
    shutil.copy(predictions, copy)
    argv = ["--benchmark", name, "--data", str(DATA[name]), "--predictions", str(copy), "--no_progress"]
    assert eval_cli.main(argv + (["--split", split] if split else []) + (["--answer_rule", rule] if rule else [])) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| benchmark | metric | value |"
    saved = json.loads((tmp_path / f"{name}_{split or 'all'}_results.json").read_text())
    assert json.loads(out.strip().splitlines()[-1]) == saved and saved["predictions"] == str(copy)
    assert saved["rule"]  # every results file names the rule its answers were read by
    return saved


# ---- answers ----

def test_answer_normalisation_matches_the_official_rules():
    assert [pope_yes_no(t) for t in ("Yes, there is a dog.", "no.", "There is not a dog.", "No", "Yes. No.")] == [
        "yes", "no", "no", "no", "yes"]
    assert [mme_yes_no(t) for t in ("Yes", "no", "yes.", "No, it is not", "I think so", "Nope")] == [
        "yes", "no", "yes", "no", "other", "no"]
    options = ["red", "green", "blue", "yellow"]
    assert [option_letter(t, options) for t in ("A", "B.", "(C) blue", "D: yellow", "The answer is C.", "green",
                                                "red or green", "E", "")] == ["A", "B", "C", "D", "C", "B", None,
                                                                              None, None]
    # the official readers: LLaVA's ScienceQA rule and MMBench's (VLMEvalKit's rule-based matching)
    assert [scienceqa_letter(t, options) for t in ("A", "B. green", "The answer is C.", "The answer is (B).",
                                                   "Answer: C", "green", "E", "B.green")] == [
        "A", "B", "C", None, None, None, None, None]
    assert [mmbench_letter(t, options) for t in ("A", "(C) blue", "It is B.", "A cat and a dog: A", "green",
                                                 "red or green", "Z", "Cannot determine the answer, B")] == [
        "A", "C", "B", None, "B", None, None, None]
    assert normalize_vqa_answer("Two.") == "2" and normalize_vqa_answer("the Coca-Cola") == "coca cola"
    assert normalize_vqa_answer("isnt it?") == "isn't it" and normalize_vqa_answer("1,000 dogs") == "1000 dogs"
    assert normalize_vqa_answer("a man's hat") == "man 's hat"
    answers = ["coke"] + ["coca cola"] * 9
    assert vqa_accuracy("Coke", answers) == pytest.approx(0.3)  # 9 subsets give 1/3, the one without it 0
    assert vqa_accuracy("coca-cola", answers) == 1.0 and vqa_accuracy("pepsi", answers) == 0.0
    assert vqa_accuracy("coke", ["coke"] * 2 + ["x"] * 8) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)


# ---- readers and prompts ----

def test_readers_and_prompts_follow_the_published_formats():
    pope = BENCHMARKS["pope"]
    assert [x.question_id for x in pope.load(str(DATA["pope"]))] == [  # all splits in one pass
        "random_1", "random_2", "random_3", "random_4", "adversarial_1", "adversarial_2", "adversarial_3"]
    q = pope.load(str(DATA["pope"]), "random")
    assert [x.question_id for x in q] == ["1", "2", "3", "4"]
    assert q[0].prompt == f"Is there a dog in the image?\n{SHORT_ANSWER}" and q[0].image.endswith("000000000042.jpg")
    mme = BENCHMARKS["mme"].load(str(DATA["mme"]))
    assert len(mme) == 8 and {x.truth["category"] for x in mme} == {"existence", "artwork", "code_reasoning"}
    assert [x.question_id for x in mme if x.truth["category"] == "artwork"] == ["artwork/images/10002.jpg"] * 2
    # LLaVA-1.5's MME prompt: MME's own "Please answer yes or no." gives way to the short-answer instruction
    assert mme[0].prompt == f"Is this artwork created by donatello?\n{SHORT_ANSWER}"
    mmb = BENCHMARKS["mmbench"].load(str(DATA["mmbench"]))
    assert [x.key for x in mmb] == [("0", 0), ("0", 1), ("0", 2), ("0", 3), ("1", 0), ("1", 1), ("1", 2), ("2", 0),
                                    ("2", 1)]
    assert mmb[4].prompt == ("The picture was taken outdoors.\nWhich season is shown?\nA. winter\nB. summer\n"
                             f"C. autumn\n{MULTIPLE_CHOICE}")
    assert mmb[5].truth == {"index": "1", "round": 1, "answer": "A", "options": ["summer", "autumn", "winter"],
                            "category": "scene"}
    assert mmb[0].load_image().size == (16, 16)  # decoded from the TSV's base64
    assert len(BENCHMARKS["mmbench"].load(str(DATA["mmbench"]), "single")) == 3
    sqa = BENCHMARKS["scienceqa"].load(str(DATA["scienceqa"]))
    assert [x.question_id for x in sqa] == ["5", "11", "20"]  # problem 12 has no image
    assert sqa[1].prompt.startswith("Context: Tree frogs live in rain forests.\nWhich animal's")
    assert sqa[1].image.endswith("scienceqa/images/test/11/image.png")  # the published layout
    assert len(BENCHMARKS["textvqa"].load(str(DATA["textvqa"]))) == 3
    assert BENCHMARKS["gqa"].load(str(DATA["gqa"]))[0].image.endswith("images/n161313.jpg")


def test_malformed_input_gets_one_sentence_naming_file_and_line(tmp_path, capsys):
    (tmp_path / "pope").mkdir()
    bad = tmp_path / "pope" / "coco_pope_random.json"
    bad.write_text('{"question_id": 1, "image": "a.jpg", "text": "?", "label": "yes"}\n{"question_id": 2, "text"\n')
    with pytest.raises(BenchmarkDataError, match=r"coco_pope_random.json line 2: not valid JSON"):
        BENCHMARKS["pope"].load(str(tmp_path / "pope"), "random")
    bad.write_text('{"question_id": 1, "image": "a.jpg", "text": "?", "label": "maybe"}\n')
    with pytest.raises(BenchmarkDataError, match=r"line 1: label must be yes or no"):
        BENCHMARKS["pope"].load(str(tmp_path / "pope"), "random")
    (tmp_path / "mme" / "count").mkdir(parents=True)
    shutil.copy(DATA["mme"] / "existence" / "000000006040.png", tmp_path / "mme" / "count" / "1.png")
    (tmp_path / "mme" / "count" / "1.txt").write_text("How many? Please answer yes or no.\tYes\nno tab here\n")
    with pytest.raises(BenchmarkDataError, match=r"count/1.txt line 2: not `question<TAB>Yes\|No`"):
        BENCHMARKS["mme"].load(str(tmp_path / "mme"))
    tsv = tmp_path / "mmbench.tsv"
    lines = DATA["mmbench"].read_text().splitlines()
    tsv.write_text("\n".join([lines[0], lines[1], lines[3].replace("\tB\t", "\tD\t", 1)]) + "\n")
    with pytest.raises(BenchmarkDataError, match=r"mmbench.tsv line 3: answer 'D' is not one of the 2 options"):
        BENCHMARKS["mmbench"].load(str(tsv))
    (tmp_path / "textvqa.json").write_text('{"data": [{"question_id": 1, "question": "?"}]}')
    with pytest.raises(BenchmarkDataError, match=r"textvqa.json: data\[0\] lacks image_id, answers"):
        BENCHMARKS["textvqa"].load(str(tmp_path / "textvqa.json"))
    # through the command line: one sentence, exit code 2
    assert eval_cli.main(["--benchmark", "textvqa", "--data", str(tmp_path / "textvqa.json"),
                          "--predictions", str(tmp_path / "p.jsonl")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'textvqa.json'}: data[0] lacks image_id, answers"]


# ---- predictions -> scores, by hand ----

def test_pope_scores(capsys, tmp_path):
    random = score_file(capsys, "pope", DATA["pope"] / "predictions_random.jsonl", tmp_path, "random")
    assert random["splits"] == {"random": {"n": 4, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                                           "yes_ratio": 0.5, "tp": 1, "fp": 1, "tn": 1, "fn": 1}}
    adversarial = score_file(capsys, "pope", DATA["pope"] / "predictions_adversarial.jsonl", tmp_path,
                             "adversarial")["splits"]["adversarial"]
    assert adversarial["accuracy"] == adversarial["f1"] == 1.0 and adversarial["yes_ratio"] == pytest.approx(1 / 3)


def test_mme_scores(capsys, tmp_path):
    results = score_file(capsys, "mme", DATA["mme"] / "predictions.jsonl", tmp_path)
    cats = results["categories"]
    assert cats["existence"] == {"questions": 4, "images": 2, "acc": 0.75, "acc_plus": 0.5, "score": 125.0}
    assert cats["artwork"]["score"] == 50.0 and cats["code_reasoning"]["score"] == 200.0
    assert results["perception"] == 175.0 and results["cognition"] == 200.0


def test_mmbench_circular_scores(capsys, tmp_path):
    results = score_file(capsys, "mmbench", DATA["mmbench"].parent / "predictions.jsonl", tmp_path)
    assert results["questions"] == 3
    assert results["circular_accuracy"] == pytest.approx(1 / 3)
    assert results["single_pass_accuracy"] == pytest.approx(2 / 3)
    assert results["per_category"] == {"attribute_recognition": 0.5, "scene": 0.0}


def test_textvqa_scienceqa_gqa_scores(capsys, tmp_path):
    textvqa = score_file(capsys, "textvqa", DATA["textvqa"].parent / "predictions.jsonl", tmp_path)
    assert textvqa["accuracy"] == pytest.approx((1 + 0.3 + 1) / 3)
    # LLaVA's rule by default: "Salt Lake City" (an option's text, not its letter) is wrong, as in LLaVA's scorer
    sqa = score_file(capsys, "scienceqa", DATA["scienceqa"] / "predictions.jsonl", tmp_path)
    assert sqa["accuracy"] == pytest.approx(1 / 3) and sqa["rule"].startswith("LLaVA's eval_science_qa.py")
    assert sqa["per_subject"] == {"natural science": 0.0, "social science": 0.5}
    lenient = score_file(capsys, "scienceqa", DATA["scienceqa"] / "predictions.jsonl", tmp_path, rule="lenient")
    assert lenient["accuracy"] == pytest.approx(2 / 3) and lenient["rule"].startswith("lenient")
    assert lenient["per_subject"] == {"natural science": 0.0, "social science": 1.0}
    gqa = score_file(capsys, "gqa", DATA["gqa"].parent / "predictions.jsonl", tmp_path)
    assert gqa["accuracy"] == pytest.approx(2 / 3)


def test_scoring_stops_on_unanswered_questions(tmp_path, capsys):
    partial = tmp_path / "p.jsonl"
    partial.write_text((DATA["gqa"].parent / "predictions.jsonl").read_text().splitlines()[0] + "\n")
    assert eval_cli.main(["--benchmark", "gqa", "--data", str(DATA["gqa"]), "--predictions", str(partial)]) == 2
    assert "answers 1 of 3 questions (first missing: 201640614)" in capsys.readouterr().err


# ---- end to end, a tiny checkpoint ----

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_ckpt")
    torch.manual_seed(0)
    model = VisionLanguageModel.build(VLMConfig(llm=save_tiny_qwen(root / "qwen"), vision=save_tiny_clip(root / "clip"),
                                                llm_mode="frozen"))
    save_checkpoint(model, str(root / "ckpt"))
    return str(root / "ckpt")


@pytest.mark.parametrize("name", sorted(DATA))
def test_each_benchmark_runs_end_to_end_and_resumes(checkpoint, name, tmp_path, capsys):
    argv = ["--model_weights", checkpoint, "--benchmark", name, "--data", str(DATA[name]), "--output_dir",
            str(tmp_path), "--max_new_tokens", "3", "--batch_size", "2", "--no_progress"]
    assert eval_cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    files = sorted(p.name for p in tmp_path.iterdir())
    companions = {"pope": ["pope_questions.jsonl"], "mmbench": ["mmbench_submission.xlsx"]}.get(name, [])
    assert files == sorted([f"{name}_predictions.jsonl", f"{name}_results.json", *companions])
    predictions = tmp_path / f"{name}_predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    fields = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert set(rows[0]) == fields | ({"round_id", "options", "option_char"} if name == "mmbench" else set())
    questions = BENCHMARKS[name].load(str(DATA[name]))
    # one line per question, in question order (LLaVA's POPE and MME scorers go by position)
    assert [r["question_id"] for r in rows] == [q.question_id for q in questions]
    assert [r["prompt"] for r in rows] == [q.recorded_prompt for q in questions]
    # a crash mid-run: two answers kept, the third cut mid-line; the rerun answers the rest, once each
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    assert eval_cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == first
    again = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["question_id"] for r in again] == [q.question_id for q in questions]
    assert [r["text"] for r in again[:2]] == [r["text"] for r in rows[:2]]
