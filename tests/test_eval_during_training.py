"""Evaluation during training: the held-out loss (labelled positions, as the training loss) and greedy answers scored
as eval.py scores them, at every --eval_steps; the loggers and --load_best_model_at_end take them as the Trainer's own
metrics; 2 DDP processes give a single process's scores; bad held-out files fail before the first step."""

import json

import pytest
import torch
from runs import argv, tiny_setup, torchrun
from safetensors.torch import load_file

import train

EVAL = ("--eval_strategy", "steps", "--eval_steps", "10", "--eval_generate", "8", "--eval_max_new_tokens", "8",
        "--per_device_eval_batch_size", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    setup = tiny_setup(tmp_path_factory.mktemp("evaluation"))
    return {**setup, "heldout": ("--eval_image_map", setup["image_map"], "--eval_captions_file", setup["captions"])}


def evaluations(run_dir) -> list[dict]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [h for h in history if "eval_loss" in h]


def test_held_out_loss_and_answers_at_each_evaluation_and_the_best_checkpoint_kept(setup, tmp_path, capsys):
    run = tmp_path / "run"
    # "best" by the highest held-out loss, so that it is the first evaluation's checkpoint, not the last one
    # group_by_length as train.sh sets it (the Trainer's own eval sampler would then encode every held-out sample)
    assert train.main(argv(setup, run, *setup["heldout"], *EVAL, "--llm_mode", "full", "--save_steps", "10",
                           "--train_sampling_strategy", "group_by_length",
                           "--load_best_model_at_end", "true", "--metric_for_best_model", "eval_loss",
                           "--greater_is_better", "true", steps=40)) == 0
    err = capsys.readouterr().err
    evals = evaluations(run)
    assert [e["step"] for e in evals] == [10, 20, 30, 40]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]  # it learns
    assert all(0 <= e["eval_exact_match"] <= 1 and "eval_exact_match_colors" in e for e in evals)
    assert err.count("eval at step ") == 4 and "eval at step 40: loss " in err and "exact match " in err
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith("checkpoint-10")
    # the final folder holds the best checkpoint's weights, not the last step's
    final, best = load_file(run / "llm" / "model.safetensors"), load_file(run / "checkpoint-10" / "llm" /
                                                                           "model.safetensors")
    last = load_file(run / "checkpoint-40" / "llm" / "model.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in best) and not all(torch.equal(final[k], last[k]) for k in last)


def test_two_processes_score_as_one(setup, tmp_path):
    flags = (*setup["heldout"], *EVAL, "--llm_mode", "full", "--save_strategy", "no")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert train.main(argv(setup, single, *flags, steps=20)) == 0
    result = torchrun(2, argv(setup, ddp, *flags, "--per_device_train_batch_size", "2", "--use_cpu", "true",
                              steps=20))
    assert result.returncode == 0, result.stderr[-3000:]
    for one, two in zip(evaluations(single), evaluations(ddp), strict=True):
        assert one["eval_exact_match"] == two["eval_exact_match"]
        assert one["eval_loss"] == pytest.approx(two["eval_loss"], abs=1e-4)
    assert len(evaluations(ddp)) == 2


@pytest.mark.parametrize("problem", ["missing", "malformed", "unknown image", "no strategy"])
def test_bad_held_out_data_fails_before_training_with_one_sentence(setup, tmp_path, capsys, problem):
    bad = tmp_path / "heldout.json"
    samples = json.loads(open(setup["captions"]).read())
    heldout = ["--eval_image_map", setup["image_map"], "--eval_captions_file", str(bad)]
    strategy = ["--eval_strategy", "steps", "--eval_steps", "5"]
    expected = {"missing": f"data file not found: {bad}", "malformed": f"{bad} line 1: not valid JSON",
                "unknown image": f"sample c0 in {bad} uses image 'purple'",
                "no strategy": "evaluation during training needs both --eval_strategy"}[problem]
    if problem == "malformed":
        bad.write_text("[{not json")
    elif problem == "unknown image":
        bad.write_text(json.dumps([{**samples[0], "images": ["purple"]}]))
    elif problem == "no strategy":
        bad.write_text(json.dumps(samples))
        strategy = []
    assert train.main(argv(setup, tmp_path / "run", *heldout, *strategy)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: " + expected), err[-1]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
