"""The demo's post-training stage (python -m demo.run --posttrain, or POSTTRAIN=1 sh demo.sh), on the SFT model:

- GRPO: "Name the shape on the right." The SFT data never answers it: its nearest question, "Name one shape in the
  image.", is answered with one of the shapes drawn at random (the answer's format, never the rule). GRPO samples 8
  answers per prompt and rewards exact matches with the shape on the right (training/rewards.py exact_match): the
  rule is learned from the reward alone. Held-out accuracy before and after, on every image and on the two-shape
  images (chance: 50%), a reward curve, and the figures per logged step.
- DPO: the English question's left/right-swapped answers as `rejected` (the hard negatives of stage 0), the correct
  order `chosen`; held-out accuracy on the two-shape images (the confusable questions) before and after. Timed apart.

Both start from the SFT checkpoint (train.py --init_from), train the LLM in full with the tower frozen, and are scored
by eval.py, which loads their checkpoints as any other (the tower comes from the SFT checkpoint they name).
"""

import json
import os
import time

GRPO = dict(steps=200, prompts=16, generations=8, learning_rate=1e-4, max_completion_length=12, temperature=1.0)
DPO = dict(steps=100, pairs=32, learning_rate=5e-6, beta=0.1)


def heldout_accuracy(run, python: str, checkpoint: str, folder: str, log: str, shapes_of: dict) -> dict:
    """eval.py's answers on a processed held-out set, scored by exact match over all its samples and over the
    two-shape images (shapes_of: image path relative to the held-out folder -> its number of shapes)."""
    out = os.path.join(checkpoint, "eval_" + os.path.basename(folder))
    run([python, "eval.py", "--model_weights", checkpoint, "--image_map", f"{folder}/image_map.json",
         "--captions_file", f"{folder}/captions.json", "--output_dir", out, "--batch_size", "100",
         "--max_new_tokens", "24", "--no_progress"], log)
    split = os.path.dirname(folder)
    right, two = [], []
    for line in open(os.path.join(out, "eval_predictions.jsonl"), encoding="utf-8"):
        row = json.loads(line)
        ok = row["prediction"].strip() == row["reference"].strip()
        right.append(ok)
        if shapes_of.get(os.path.relpath(row["images"][0], split)) == 2:
            two.append(ok)
    return {"n": len(right), "exact_match": sum(right) / len(right),
            "two_shapes": sum(two) / len(two) if two else float("nan"), "n_two_shapes": len(two)}


def shape_counts(data: str) -> dict:
    """image path -> how many shapes it holds, from the held-out English annotations."""
    with open(os.path.join(data, "test", "annotations_en.json"), encoding="utf-8") as f:
        rows = json.load(f)
    return {row["images"][0]: 1 + row["conversations"][-1]["content"].count(" and ") for row in rows}


def run_posttrain(run, python: str, data: str, sft: str, seed: int, grpo_steps: int | None = None,
                  dpo_steps: int | None = None) -> dict:
    """GRPO then DPO from the SFT checkpoint `sft` (0 steps: that stage is left out)."""
    test, train = os.path.join(data, "test"), os.path.join(data, "train")
    counts = shape_counts(data)
    results = {}

    def accuracy(checkpoint, name, log):
        return heldout_accuracy(run, python, checkpoint, os.path.join(test, name), log, counts)

    # ---- GRPO: a rule learned from rewards alone ----
    steps = GRPO["steps"] if grpo_steps is None else grpo_steps
    if steps:
        results["grpo"] = grpo_stage(run, python, data, sft, seed, steps, accuracy, train)
    steps = DPO["steps"] if dpo_steps is None else dpo_steps
    if steps:
        results["dpo"] = dpo_stage(run, python, data, sft, seed, steps, accuracy, train)
    return results


def grpo_stage(run, python, data, sft, seed, steps, accuracy, train) -> dict:
    from training.plot import plot_curve

    out = sft + "_grpo"
    before = accuracy(sft, "right", os.path.join(data, "eval_right_sft.log"))
    print(f"  after SFT, \"Name the shape on the right.\": {before['exact_match']:.1%} of {before['n']} held-out "
          f"images, {before['two_shapes']:.1%} of the {before['n_two_shapes']} with two shapes (chance 50%)")
    start = time.time()
    run([python, "train.py", "--init_from", sft, "--objective", "grpo", "--reward_funcs", "exact_match",
         "--image_map", f"{train}/right/image_map.json", "--captions_file", f"{train}/right/captions.json",
         "--output_dir", out, "--llm_mode", "full", "--vision_mode", "frozen", "--max_steps", str(steps),
         "--per_device_train_batch_size", str(GRPO["prompts"]), "--num_generations", str(GRPO["generations"]),
         "--max_completion_length", str(GRPO["max_completion_length"]), "--temperature", str(GRPO["temperature"]),
         "--learning_rate", str(GRPO["learning_rate"]), "--lr_scheduler_type", "constant",
         "--logging_steps", str(min(5, steps)),
         "--save_strategy", "no", "--report_to", "none", "--seed", str(seed), "--auto_resume", "false",
         "--cache_images", "true", "--dataloader_num_workers", "0"], os.path.join(data, "train_grpo.log"))
    grpo_seconds = time.time() - start
    history = json.load(open(os.path.join(out, "trainer_state.json")))["log_history"]
    logged = [h for h in history if "reward" in h]
    print("  step  reward  reward_std  length")
    for h in logged:
        print(f"  {h['step']:4d}  {h['reward']:.3f}   {h['reward_std']:.3f}       {h['completions/mean_length']:.1f}")
    curve = plot_curve([h["step"] for h in logged], [h["reward"] for h in logged], os.path.join(out, "reward.png"),
                       "GRPO: mean reward (exact match with the shape on the right)", log_scale=False,
                       label="mean reward", ylabel="reward")
    after = accuracy(out, "right", os.path.join(data, "eval_right_grpo.log"))
    print(f"  after GRPO ({steps} steps, {grpo_seconds:.0f} s): {after['exact_match']:.1%} of the held-out images, "
          f"{after['two_shapes']:.1%} of those with two shapes; reward curve in {curve}")
    return {"before": before, "after": after, "steps": steps, "seconds": round(grpo_seconds, 1),
            "rewards": [[h["step"], h["reward"]] for h in logged]}


def dpo_stage(run, python, data, sft, seed, steps, accuracy, train) -> dict:
    """DPO: the swapped order as the rejected answer."""
    out = sft + "_dpo"
    before = accuracy(sft, "pairs", os.path.join(data, "eval_pairs_sft.log"))
    start = time.time()
    run([python, "train.py", "--init_from", sft, "--objective", "dpo", "--beta", str(DPO["beta"]),
         "--image_map", f"{train}/pairs/image_map.json", "--captions_file", f"{train}/pairs/captions.json",
         "--output_dir", out, "--llm_mode", "full", "--vision_mode", "frozen", "--max_steps", str(steps),
         "--per_device_train_batch_size", str(DPO["pairs"]), "--per_device_eval_batch_size", "64",
         "--learning_rate", str(DPO["learning_rate"]), "--lr_scheduler_type", "constant",
         "--logging_steps", str(min(10, steps)),
         "--save_strategy", "no", "--report_to", "none", "--seed", str(seed), "--auto_resume", "false",
         "--cache_images", "true", "--dataloader_num_workers", "0"], os.path.join(data, "train_dpo.log"))
    dpo_seconds = time.time() - start
    after = accuracy(out, "pairs", os.path.join(data, "eval_pairs_dpo.log"))
    history = json.load(open(os.path.join(out, "trainer_state.json")))["log_history"]
    logged = [h for h in history if "rewards/accuracies" in h]
    print(f"  DPO ({steps} steps, {dpo_seconds:.0f} s): preference accuracy {logged[0]['rewards/accuracies']:.1%} -> "
          f"{logged[-1]['rewards/accuracies']:.1%}, margin {logged[-1]['rewards/margins']:.3f}; held-out two-shape "
          f"English answers (the confusable order): {before['exact_match']:.1%} -> {after['exact_match']:.1%} of "
          f"{after['n']}")
    return {"before": before, "after": after, "steps": steps, "seconds": round(dpo_seconds, 1),
            "preference_accuracy": [logged[0]["rewards/accuracies"], logged[-1]["rewards/accuracies"]]}
