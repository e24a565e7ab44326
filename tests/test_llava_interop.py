"""Predictions cross both ways between this project and LLaVA's evaluation scripts.

For each benchmark, a predictions file written here in LLaVA's layout (as its model_vqa*.py scripts write it)
scores the same through eval.py as through a reference computation written below from the benchmark's
published scoring rule (LLaVA's eval_pope.py, eval_textvqa.py + m4c_evaluator, eval_science_qa.py,
convert_answer_to_mme.py + MME's calculation.py, convert_gqa_for_eval.py + GQA's eval.py, VLMEvalKit's
matching for MMBench). And the other way: the file eval.py writes is read by those reference scorers, as
LLaVA's own would read it, to the same figures."""

import json
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from openpyxl import load_workbook

import eval as eval_cli
from evaluation import BENCHMARKS
from evaluation.answers import normalize_vqa_answer
from evaluation.prompts import MULTIPLE_CHOICE, SHORT_ANSWER

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def ours(capsys, name, data, predictions, *extra) -> dict:
    """eval.py's score-only path on a predictions file; the results it prints."""
    assert eval_cli.main(["--benchmark", name, "--data", str(data), "--predictions", str(predictions),
                          "--no_progress", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def row(question_id, prompt, text, **more):
    return {"question_id": question_id, **more, "prompt": prompt, "text": text, "answer_id": "x", "model_id": "llava",
            "metadata": {}}


class StubModel:
    """Answers by the question text (what a VLM's `answer` returns), so eval.py writes a real predictions file."""

    def __init__(self, replies: dict[str, str], default: str = "no"):
        self.replies, self.default = replies, default

    def answer(self, conversations, images, max_new_tokens=None):
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            out.append(next((r for q, r in self.replies.items() if q in text), self.default))
        return out


@pytest.fixture
def answer_with(monkeypatch):
    """eval.py's benchmark path with a given model answering: returns the predictions file it writes."""
    def run(model, name, data, folder, *extra) -> Path:
        import model.device as device  # eval.py imports its loader from there once its flags are parsed

        monkeypatch.setattr(device, "load_for_inference", lambda _args: model)
        assert eval_cli.main(["--model_weights", str(folder), "--benchmark", name, "--data", str(data),
                              "--output_dir", str(folder), "--no_progress", *extra]) == 0
        return folder / f"{name}_predictions.jsonl"

    return run


# ---- POPE: one answers file for all splits, lined up with each split's labels by position ----

def llava_eval_pope(question_file, annotation_dir, result_file) -> dict:
    """LLaVA's eval_pope.py: answers of a category, in file order, zipped with that category's labels."""
    questions = {q["question_id"]: q for q in read_jsonl(question_file)}
    answers = read_jsonl(result_file)
    out = {}
    for file in sorted(os.listdir(annotation_dir)):
        if not (file.startswith("coco_pope_") and file.endswith(".json")):
            continue
        category = file[10:-5]
        labels = [json.loads(line)["label"] for line in open(os.path.join(annotation_dir, file))]
        preds = []
        for a in (x for x in answers if questions[x["question_id"]]["category"] == category):
            text = a["text"].split(".")[0] if "." in a["text"] else a["text"]
            words = text.replace(",", "").split(" ")
            preds.append("no" if "No" in words or "not" in words or "no" in words else "yes")
        tp = sum(p == "yes" and t == "yes" for p, t in zip(preds, labels, strict=False))
        fp = sum(p == "yes" and t == "no" for p, t in zip(preds, labels, strict=False))
        tn = sum(p == "no" and t == "no" for p, t in zip(preds, labels, strict=False))
        fn = sum(p == "no" and t == "yes" for p, t in zip(preds, labels, strict=False))
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        out[category] = {"accuracy": (tp + tn) / (tp + tn + fp + fn), "precision": precision, "recall": recall,
                         "f1": 2 * precision * recall / (precision + recall),
                         "yes_ratio": preds.count("yes") / len(preds)}
    return out


def pope_figures(results):
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    return {split: {k: pytest.approx(r[k]) for k in keys} for split, r in results["splits"].items()}


def test_pope_llava_files_score_here_and_ours_score_there(tmp_path, capsys, answer_with):
    pope = tmp_path / "pope"  # LLaVA's playground layout: llava_pope_test.jsonl, coco/, val2014/
    shutil.copytree(FIXTURES / "pope" / "val2014", pope / "val2014")
    (pope / "coco").mkdir()
    for split in ("random", "adversarial"):
        shutil.copy(FIXTURES / "pope" / f"coco_pope_{split}.json", pope / "coco")
    labels = {s: read_jsonl(pope / "coco" / f"coco_pope_{s}.json") for s in ("random", "adversarial")}
    questions, n = [], 0
    for split in ("adversarial", "random"):  # LLaVA's ids: one numbering across the splits
        for q in labels[split]:
            n += 1
            questions.append({"question_id": n, "image": q["image"], "text": f"{q['text']}\n{SHORT_ANSWER}",
                              "category": split})
    write_jsonl(pope / "llava_pope_test.jsonl", questions)
    replies = ["No, there is no cat.", "Yes.", "no", "Yes, a dog.", "No", "There is not a person.", "yes"]
    answers = write_jsonl(tmp_path / "llava-v1.5.jsonl", [row(q["question_id"], q["text"], r)
                                                          for q, r in zip(questions, replies, strict=True)])
    reference = llava_eval_pope(pope / "llava_pope_test.jsonl", pope / "coco", answers)
    got = ours(capsys, "pope", pope, answers)
    assert pope_figures(got) == {s: pytest.approx(reference[s]) for s in reference}
    assert got["splits"]["adversarial"]["n"] == 3 and got["splits"]["random"]["n"] == 4

    # ours, written by eval.py (ids of its own, no LLaVA question file): LLaVA's scorer reads it with the
    # question file written beside it
    own = tmp_path / "own"
    shutil.copytree(FIXTURES / "pope", own / "data")
    model = StubModel({"dog": "Yes, there is a dog.", "person": "No", "bicycle": "Yes", "toaster": "yes"})
    predictions = answer_with(model, "pope", own / "data", own)
    results = json.loads((own / "pope_results.json").read_text())
    reference = llava_eval_pope(own / "pope_questions.jsonl", own / "data", predictions)
    assert pope_figures(results) == {s: pytest.approx(reference[s]) for s in reference}
    assert len(read_jsonl(predictions)) == 7  # the three splits' questions in one file


# ---- MME: question_id = the image path, shared by both questions of an image ----

def llava_mme_scores(data: Path, result_file) -> dict:
    """LLaVA's convert_answer_to_mme.py, then MME's calculation.py (an image's two lines in a row)."""
    gt = {}
    for category in os.listdir(data):
        folder = data / category
        if not folder.is_dir():
            continue
        qa = folder / "questions_answers_YN" if (folder / "images").exists() else folder
        for file in os.listdir(qa):
            if file.endswith(".txt"):
                for line in open(qa / file):
                    question, answer = line.strip().split("\t")
                    gt[(category, file, question)] = answer
    per_category = defaultdict(list)
    for answer in read_jsonl(result_file):
        category = answer["question_id"].split("/")[0]
        file = answer["question_id"].split("/")[-1].split(".")[0] + ".txt"
        prompt = answer["prompt"].replace(SHORT_ANSWER, "").strip()
        if "Please answer yes or no." not in prompt:
            prompt += " Please answer yes or no."
        per_category[category].append((file, gt[category, file, prompt], answer["text"]))
    scores = {}
    for category, lines in per_category.items():
        def label(text):
            text = text.lower().strip()
            if text in ("yes", "no"):
                return text
            return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"
        rights = [label(pred) == truth.lower() for _, truth, pred in lines]
        acc = sum(rights) / len(rights)
        acc_plus = sum(rights[i] and rights[i + 1] for i in range(0, len(rights), 2)) / (len(rights) // 2)
        scores[category] = 100 * (acc + acc_plus)
    return scores


def test_mme_llava_files_score_here_and_ours_score_there(tmp_path, capsys, answer_with):
    data = FIXTURES / "mme"
    # llava_mme.jsonl's ids: the image path (one category in each of the two spellings LLaVA's tools accept)
    ids = {"existence": "existence/{}.png", "artwork": "artwork/images/{}.jpg",
           "code_reasoning": "code_reasoning/{}.png"}
    rows, replies = [], iter(["Yes", "No", "yes.", "Yes", "I think so", "no", "Yes", "No"])
    for category in ("existence", "artwork", "code_reasoning"):
        qa = data / category / "questions_answers_YN" if category == "artwork" else data / category
        for file in sorted(os.listdir(qa)):
            if file.endswith(".txt"):
                for line in open(qa / file):
                    question = line.split("\t")[0].replace(" Please answer yes or no.", "")
                    rows.append(row(ids[category].format(file[:-4]), f"{question}\n{SHORT_ANSWER}", next(replies)))
    answers = write_jsonl(tmp_path / "llava-v1.5.jsonl", rows)
    reference = llava_mme_scores(data, answers)
    got = ours(capsys, "mme", data, answers)
    assert {c: r["score"] for c, r in got["categories"].items()} == pytest.approx(reference)

    model = StubModel({"train": "Yes", "bed": "Yes", "horse": "yes", "donatello": "Yes", "Hello": "Yes"})
    predictions = answer_with(model, "mme", data, tmp_path / "own")
    results = json.loads((tmp_path / "own" / "mme_results.json").read_text())
    reference = llava_mme_scores(data, predictions)
    assert {c: r["score"] for c, r in results["categories"].items()} == pytest.approx(reference)


# ---- TextVQA: keyed by image id + question text ----

def m4c_textvqa_accuracy(annotation_file, result_file) -> float:
    """LLaVA's eval_textvqa.py with m4c_evaluator's TextVQAAccuracyEvaluator (EvalAI's answer processor)."""
    annotations = {(a["image_id"], a["question"].lower()): a for a in json.load(open(annotation_file))["data"]}
    scores = []
    for result in read_jsonl(result_file):
        prompt = result["prompt"]
        lines = prompt.split("\n")
        if "Reference OCR token: " in prompt and len(lines) == 3:
            question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
        else:
            assert len(lines) == 2
            question = lines[0]
        gt = [normalize_vqa_answer(a) for a in annotations[(result["question_id"], question.lower())]["answers"]]
        pred = normalize_vqa_answer(result["text"])
        indexed = list(enumerate(gt))
        accs = [min(1, len([o for o in indexed if o != g and o[1] == pred]) / 3) for g in indexed]
        scores.append(sum(accs) / len(accs))
    return sum(scores) / len(scores)


def test_textvqa_llava_files_score_here_and_ours_score_there(tmp_path, capsys, answer_with):
    data = FIXTURES / "textvqa" / "TextVQA_0.5.1_val.json"
    ocr = {"003a8ae2ef43b901": ["dakota", "digital"], "0054c91397f2fe05": [], "005635e119b9f32f": ["coca-cola"]}
    ocr_file = tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json"
    ocr_file.write_text(json.dumps({"data": [{"image_id": k, "ocr_tokens": v} for k, v in ocr.items()]}))
    rows = []
    for q, reply in zip(json.loads(data.read_text())["data"], ["Dakota", "3", "The Coca-Cola."], strict=True):
        tokens = f"\nReference OCR token: {', '.join(ocr[q['image_id']])}" if ocr[q["image_id"]] else ""
        rows.append(row(q["image_id"], f"{q['question']}{tokens}\n{SHORT_ANSWER}", reply))
    answers = write_jsonl(tmp_path / "llava-v1.5.jsonl", rows)
    reference = m4c_textvqa_accuracy(data, answers)
    assert reference == pytest.approx((1 + 0.3 + 1) / 3)
    assert ours(capsys, "textvqa", data, answers, "--ocr_tokens", str(ocr_file))["accuracy"] == pytest.approx(reference)

    model = StubModel({"brand": "dakota", "bottles": "2", "sign": "coke"})
    predictions = answer_with(model, "textvqa", data, tmp_path / "own", "--ocr_tokens", str(ocr_file))
    written = read_jsonl(predictions)
    assert written[0]["prompt"] == ("what is the brand of this camera?\nReference OCR token: dakota, digital\n"
                                    f"{SHORT_ANSWER}")
    assert written[1]["prompt"] == f"how many bottles are there?\n{SHORT_ANSWER}"  # no OCR tokens: no line
    results = json.loads((tmp_path / "own" / "textvqa_results.json").read_text())
    assert results["accuracy"] == pytest.approx(m4c_textvqa_accuracy(data, predictions))


def test_textvqa_ocr_file_must_cover_every_image(tmp_path, capsys):
    ocr_file = tmp_path / "ocr.json"
    ocr_file.write_text(json.dumps({"data": [{"image_id": "003a8ae2ef43b901", "ocr_tokens": []}]}))
    assert eval_cli.main(["--benchmark", "textvqa", "--data", str(FIXTURES / "textvqa" / "TextVQA_0.5.1_val.json"),
                          "--predictions", str(tmp_path / "p.jsonl"), "--ocr_tokens", str(ocr_file)]) == 2
    assert "has no OCR tokens for image 0054c91397f2fe05" in capsys.readouterr().err


# ---- ScienceQA: LLaVA's letter rule, <image> in the prompt ----

def llava_science_qa_img_accuracy(base_dir, result_file, split="test") -> float:
    """LLaVA's eval_science_qa.py: IMG-Accuracy over the predictions whose prompt holds <image>."""
    problems = json.load(open(os.path.join(base_dir, "problems.json")))
    split_ids = json.load(open(os.path.join(base_dir, "pid_splits.json")))[split]
    predictions = {p["question_id"]: p for p in read_jsonl(result_file)}
    options = ["A", "B", "C", "D", "E"]
    correct = total = 0
    for pid in split_ids:
        pred = predictions.get(pid, {"text": "FAILED", "prompt": "Unknown"})
        text = pred["text"]
        if text in options:
            answer = text
        elif len(text) >= 3 and text[0] in options and text[1:3] == ". ":
            answer = text[0]
        else:
            found = re.compile(r"The answer is ([A-Z]).").findall(text)
            answer = found[0] if len(found) == 1 else "FAILED"
        index = options.index(answer) if answer in options[: len(problems[pid]["choices"])] else -1
        if "<image>" in pred["prompt"]:
            total += 1
            correct += index == problems[pid]["answer"]
    return correct / total


def test_scienceqa_llava_files_score_here_and_ours_score_there(tmp_path, capsys, answer_with):
    data = FIXTURES / "scienceqa"
    questions = BENCHMARKS["scienceqa"].load(str(data))
    replies = {"5": "A", "11": "The answer is A.", "20": "Salt Lake City"}
    answers = write_jsonl(tmp_path / "llava-v1.5.jsonl", [
        row(q.question_id, f"<image>\n{q.prompt}", replies[q.question_id]) for q in questions])
    reference = llava_science_qa_img_accuracy(data, answers)
    assert reference == pytest.approx(2 / 3)
    assert ours(capsys, "scienceqa", data, answers)["accuracy"] == pytest.approx(reference)

    model = StubModel({"farthest north": "A", "Tree frogs": "B. Eurasian lynx", "capital": "The answer is (C)."})
    predictions = answer_with(model, "scienceqa", data, tmp_path / "own")
    assert all(r["prompt"].startswith("<image>\n") for r in read_jsonl(predictions))  # LLaVA's IMG subset marker
    results = json.loads((tmp_path / "own" / "scienceqa_results.json").read_text())
    assert results["accuracy"] == pytest.approx(llava_science_qa_img_accuracy(data, predictions))


# ---- GQA: convert_gqa_for_eval.py, then GQA's exact match ----

def gqa_accuracy(questions_file, result_file) -> float:
    gold = json.load(open(questions_file))
    converted = [{"questionId": r["question_id"], "prediction": r["text"].rstrip(".").lower()}
                 for r in read_jsonl(result_file)]
    return sum(p["prediction"] == gold[p["questionId"]]["answer"] for p in converted) / len(gold)


def test_gqa_llava_files_score_here_and_ours_score_there(tmp_path, capsys, answer_with):
    data = FIXTURES / "gqa" / "testdev_balanced_questions.json"
    questions = BENCHMARKS["gqa"].load(str(data))
    answers = write_jsonl(tmp_path / "llava-v1.5.jsonl", [
        row(q.question_id, q.prompt, reply) for q, reply in zip(questions, ["No.", "Left", "table"], strict=True)])
    reference = gqa_accuracy(data, answers)
    assert ours(capsys, "gqa", data, answers)["accuracy"] == pytest.approx(reference)

    predictions = answer_with(StubModel({}, default="Yes."), "gqa", data, tmp_path / "own")
    results = json.loads((tmp_path / "own" / "gqa_results.json").read_text())
    assert results["accuracy"] == pytest.approx(gqa_accuracy(data, predictions))


# ---- MMBench: question_id = index, round_id; VLMEvalKit's matching; the submission sheet ----

def vlmevalkit_circular_accuracy(tsv_rows, result_file) -> float:
    """Circular accuracy with VLMEvalKit's can_infer (option letter, then option text) on each round."""
    def can_infer(answer, choices):
        if any(refusal in answer for refusal in ("Cannot determine the answer", "I can't process this file.")):
            return "Z"
        mod = answer
        for c in ".()[],:;!*#{}":
            mod = mod.replace(c, " ")
        splits = mod.split()
        if sum(c in splits for c in choices) == 1 and not ("A" in splits and len(splits) > 3):
            return next(c for c in choices if c in splits)
        cands = [k for k, v in choices.items() if v.lower() in answer.lower()]
        return cands[0] if len(cands) == 1 else None

    by_index = defaultdict(list)
    for r in read_jsonl(result_file):
        by_index[str(r["question_id"])].append(r)
    right = []
    for q in tsv_rows:
        options = [q[c] for c in "ABCD" if q.get(c) not in (None, "", "nan")]
        ok = True
        for r in by_index[q["index"]]:
            rotated = options[r["round_id"]:] + options[: r["round_id"]]
            truth = "ABCD"[(("ABCD".index(q["answer"])) - r["round_id"]) % len(options)]
            ok &= can_infer(r["text"], dict(zip("ABCD", rotated, strict=False))) == truth
        right.append(ok)
    return sum(right) / len(right)


def test_mmbench_llava_files_score_here_and_ours_score_there(tmp_path, capsys, answer_with):
    import csv

    data = FIXTURES / "mmbench" / "MMBench_DEV_EN.tsv"
    tsv = list(csv.DictReader(open(data, newline=""), delimiter="\t"))
    questions = BENCHMARKS["mmbench"].load(str(data))
    replies = iter(["A", "D. red", "The answer is C.", "red", "(B) summer", "B", "C", "A", "B"])
    answers = write_jsonl(tmp_path / "llava-v1.5.jsonl", [
        row(int(q.truth["index"]), q.recorded_prompt, next(replies), round_id=q.truth["round"],
            options=q.truth["options"], option_char=list("ABCD"[: len(q.truth["options"])])) for q in questions])
    reference = vlmevalkit_circular_accuracy(tsv, answers)
    assert ours(capsys, "mmbench", data, answers)["circular_accuracy"] == pytest.approx(reference)
    assert not questions[0].recorded_prompt.endswith(MULTIPLE_CHOICE)  # LLaVA records it without the instruction

    model = StubModel({"square": "A", "season": "summer", "dark": "Cannot determine the answer"})
    predictions = answer_with(model, "mmbench", data, tmp_path / "own")
    results = json.loads((tmp_path / "own" / "mmbench_results.json").read_text())
    assert results["circular_accuracy"] == pytest.approx(vlmevalkit_circular_accuracy(tsv, predictions))
    # the submission sheet LLaVA's convert_mmbench_for_submission.py writes: dropped columns, prediction after D
    sheet = list(load_workbook(tmp_path / "own" / "mmbench_submission.xlsx").active.values)
    assert sheet[0] == ("index", "question", "A", "B", "C", "D", "prediction", "answer", "split")
    assert [r[0] for r in sheet[1:]] == [0, 1, 2] and [r[6] for r in sheet[1:]] == [
        "A", "summer", "Cannot determine the answer"]
    assert results["circular_accuracy"] == pytest.approx(1 / 3)  # "summer", by its text, in every rotation
