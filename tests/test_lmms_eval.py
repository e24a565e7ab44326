"""lmms-eval on our checkpoints, offline: `--model vlm` (evaluation/lmms_model.py, registered through lmms-eval's
`lmms_eval.models` entry point) answers a local task exactly as eval.py answers the same questions, and chooses in a
multiple-choice task by the log-probabilities our model gives; lmms-eval's own `llava_hf` on the Llava export of the
same checkpoint answers the same."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import argv, env
from tiny import save_tiny_clip, save_tiny_qwen, write_color_dataset

import eval as eval_cli
import train
from model import load_checkpoint
from model.export import export

COLOURS = ["red", "green", "blue", "yellow"]
TASKS = """
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
"""
FREE = TASKS + """output_type: generate_until
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
CHOICE = TASKS + """output_type: multiple_choice
doc_to_choice: !function utils.doc_to_choice
doc_to_target: !function utils.doc_to_target
target_delimiter: ""
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny checkpoint that has learned to name the colour of an image, and the held-out questions as our
    conversation files and as an lmms-eval task folder."""
    root = tmp_path_factory.mktemp("lmms")
    image_map, captions = write_color_dataset(root / "data")
    # a context of 256 positions: the prompts (about 50 tokens) stay below it, so QWen's dynamic NTK, which applies past
    # seq_length at inference only, leaves them as trained, and the export to Qwen2 keeps the same numbers
    setup = {"llm": save_tiny_qwen(root / "qwen", seq_length=256, max_position_embeddings=256),
             "vision": save_tiny_clip(root / "clip"), "image_map": image_map, "captions": captions}
    run = root / "run"
    assert train.main(argv(setup, run, "--llm_mode", "full", steps=80)) == 0
    images = json.loads(Path(setup["image_map"]).read_text())
    docs = [{"id": f"q{i}", "question": "What colour?", "answer": colour, "image": images[colour]["path"]}
            for i, colour in enumerate(COLOURS * 2)]
    tasks = root / "tasks"
    tasks.mkdir()
    shutil.copy(Path(__file__).parent / "lmms_task" / "utils.py", tasks / "utils.py")
    (tasks / "docs.json").write_text("\n".join(json.dumps(d) for d in docs))
    (tasks / "vlm_colours.yaml").write_text(FREE.format(name="vlm_colours", data=tasks / "docs.json"))
    (tasks / "vlm_colours_choice.yaml").write_text(CHOICE.format(name="vlm_colours_choice", data=tasks / "docs.json"))
    captions = [{"id": d["id"], "source": "colours", "images": [d["answer"]], "conversations": [
        {"role": "user", "content": "<|extra_0|>" + d["question"]}, {"role": "assistant", "content": d["answer"]}]}
        for d in docs]
    (root / "heldout.json").write_text(json.dumps(captions))
    return {"run": run, "tasks": tasks, "docs": docs, "image_map": setup["image_map"],
            "captions": str(root / "heldout.json"), "root": root}


def lmms_eval(model: str, model_args: str, tasks: str, checkpoint, out: Path, batch_size: int = 4) -> dict:
    """Runs `python -m lmms_eval` offline; returns {task: the logged samples, in doc order} and the results. lmms-eval
    exits 0 even when a run fails, so a run that logged no sample of every task fails here with its messages."""
    cmd = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args, "--tasks", tasks,
           "--include_path", str(checkpoint["tasks"]), "--batch_size", str(batch_size), "--output_path", str(out),
           "--log_samples", "--verbosity", "WARNING"]
    result = subprocess.run(cmd, env=env(HF_HOME=str(checkpoint["root"] / "hf"), HF_HUB_OFFLINE="1",
                                         HF_DATASETS_OFFLINE="1"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    answers, results = {}, {}
    for path in out.rglob("*.json*"):
        if path.name.endswith("_results.json"):
            results.update(json.loads(path.read_text())["results"])
        elif "samples_" in path.name:
            task = path.name.split("samples_", 1)[1].rsplit(".", 1)[0]
            rows = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["doc_id"])
            answers[task] = rows
    assert set(answers) == set(tasks.split(",")) and results, result.stdout[-3000:] + result.stderr[-3000:]
    return {"answers": answers, "results": results}


def eval_py_answers(checkpoint, capsys) -> list[str]:
    assert eval_cli.main(["--model_weights", str(checkpoint["run"]), "--image_map", checkpoint["image_map"],
                          "--captions_file", checkpoint["captions"], "--max_new_tokens", "8", "--batch_size", "4",
                          "--no_progress"]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (checkpoint["run"] / "eval_predictions.jsonl").read_text().splitlines()]
    return [row["prediction"] for row in rows]


def test_our_model_in_lmms_eval_answers_as_eval_py_and_chooses_by_its_log_probabilities(checkpoint, tmp_path,
                                                                                         capsys):
    expected = eval_py_answers(checkpoint, capsys)
    assert sum(a == d["answer"] for a, d in zip(expected, checkpoint["docs"], strict=True)) >= 6, expected  # learned
    # dtype=float32: torch's spelling, as llava_hf takes it (ours is fp32; both work)
    ran = lmms_eval("vlm", f"pretrained={checkpoint['run']},device=cpu,dtype=float32", "vlm_colours,vlm_colours_choice",
                    checkpoint, tmp_path / "out")
    free = [row["filtered_resps"] for row in ran["answers"]["vlm_colours"]]
    print(f"eval.py: {expected}\nlmms-eval --model vlm: {free}")
    assert free == expected
    assert ran["results"]["vlm_colours"]["exact_match,none"] == pytest.approx(
        sum(a == d["answer"] for a, d in zip(expected, checkpoint["docs"], strict=True)) / len(expected))
    # multiple choice: each choice's score is our model's own loss on that reply (the training path's numbers), and
    # lmms-eval picks the lowest
    model = load_checkpoint(str(checkpoint["run"]))
    chosen = []
    for row, doc in zip(ran["answers"]["vlm_colours_choice"], checkpoint["docs"], strict=True):
        scores = [float(loss) for loss, _ in row["filtered_resps"]]
        assert scores == pytest.approx([reply_loss(model, doc, c) for c in COLOURS], abs=1e-4)
        chosen.append(COLOURS[scores.index(min(scores))])
    right = sum(c == d["answer"] for c, d in zip(chosen, checkpoint["docs"], strict=True)) / len(chosen)
    assert ran["results"]["vlm_colours_choice"]["acc,none"] == pytest.approx(right) and right >= 0.75


@torch.no_grad()
def reply_loss(model, doc, reply: str) -> float:
    """-log P(reply | prompt) per reply token: the model's training loss with the reply as the only labels."""
    from PIL import Image

    processor = model.processor
    prompt = processor.render([{"role": "user", "content": "<|extra_0|>" + doc["question"]}],
                              add_generation_prompt=True)
    batch = processor([prompt], [[Image.open(doc["image"]).convert("RGB")]])
    target = torch.tensor(processor.tokenizer.encode(reply, add_special_tokens=False))
    input_ids = torch.cat([batch["input_ids"][0], target])[None]
    labels = torch.full_like(input_ids, -100)
    labels[0, -len(target):] = target
    model.loss_impl = "plain"
    return float(model(input_ids, pixel_values=batch["pixel_values"], labels=labels).loss)  # mean over the reply


def test_lmms_eval_llava_hf_on_the_export_answers_the_same(checkpoint, tmp_path, capsys):
    expected = eval_py_answers(checkpoint, capsys)
    llava = tmp_path / "llava"
    export(str(checkpoint["run"]), str(llava), "llava")
    ran = lmms_eval("llava_hf", f"pretrained={llava},device=cpu,device_map=cpu,dtype=float32", "vlm_colours",
                    checkpoint, tmp_path / "out", batch_size=1)  # llava_hf answers one at a time
    answers = [row["filtered_resps"] for row in ran["answers"]["vlm_colours"]]
    print(f"eval.py: {expected}\nlmms-eval --model llava_hf on the export: {answers}")
    assert answers == expected
    assert not os.path.exists(llava / "pytorch_model.bin")  # safetensors only
