"""The CPU demo, end to end, through the project's real commands:

  1. a synthetic shapes-and-colours data set in the `conversations` format (train + held-out images)
  2. process_image.py on it
  3. tiny base models (our QWen with a 256-byte vocabulary, a CLIP-style ViT), saved as model folders
  4. train.py: the whole tiny LLM and the projector trained, the random ViT frozen
  5. eval.py on the held-out images
  6. a few Q&A examples, the accuracy, a loss-curve PNG and a PNG grid of held-out answers

    python -m demo.run [--seed 0] [--steps N] [--quick]     (sh demo.sh sets up .venv first)
"""

import argparse
import json
import os
import subprocess
import sys
import time

import yaml

from .bases import build_tiny_llm, build_tiny_qwen2, build_tiny_vision
from .grid import draw_grid
from .synthetic import write_split

# Tuned on the 2-core CPU machine this project is developed on; see README "The CPU demo".
DEFAULTS = dict(train_images=6000, test_images=200, image_size=96, steps=1000, batch_size=32, learning_rate=3e-3)


def run(cmd: list[str], log: str) -> str:
    """Runs one of the project's commands, its output to a log file; stops the demo if it fails."""
    print("  $ " + " ".join(cmd), flush=True)
    with open(log, "w") as f:
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
    if result.returncode != 0:
        sys.exit(f"demo: step failed (exit {result.returncode}); see {log}")
    return result.stdout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="data, initialisation and training seed")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--train_images", type=int, default=DEFAULTS["train_images"])
    p.add_argument("--test_images", type=int, default=DEFAULTS["test_images"])
    p.add_argument("--data_dir", default="data/demo")
    p.add_argument("--output_dir", default="weights/demo")
    p.add_argument("--llm", choices=["qwen", "qwen2"], default="qwen",
                   help="the tiny LLM: our QWen (default) or transformers' Qwen2")
    p.add_argument("--quick", action="store_true", help="a smoke run: 40 steps on 200 images")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.train_images, args.test_images = 40, 200, 20
    data, out, base = args.data_dir, args.output_dir, args.output_dir + "_base"
    os.makedirs(data, exist_ok=True)
    python, times = sys.executable, {}

    def step(name):
        times[name] = time.time()
        print(f"\n[{len(times)}/6] {name}", flush=True)

    step("synthetic data")
    for split, n, seed in (("train", args.train_images, args.seed), ("test", args.test_images, 10_000 + args.seed)):
        files = write_split(os.path.join(data, split), n, DEFAULTS["image_size"], seed)
        config = {"output_dir": os.path.join(data, split, "processed"), "seed": args.seed, "sources": [
            {"type": "conversations", "name": lang, "annotations": path, "image_dir": os.path.join(data, split)}
            for lang, path in files.items()]}
        with open(os.path.join(data, f"{split}.yaml"), "w") as f:
            yaml.safe_dump(config, f)
    print(f"  {args.train_images} training and {args.test_images} held-out images, 2 questions each")

    step("process_image.py")
    for split in ("train", "test"):
        print(run([python, "process_image.py", "--config", os.path.join(data, f"{split}.yaml"), "--no_progress"],
                  os.path.join(data, f"process_{split}.log")).rstrip())

    step("tiny base models")
    build = build_tiny_llm if args.llm == "qwen" else build_tiny_qwen2
    llm = build(os.path.join(base, "llm"), args.seed)
    vision = build_tiny_vision(os.path.join(base, "vision"), args.seed)
    print(f"  {llm}: {'QWen' if args.llm == 'qwen' else 'Qwen2'}, 2 layers, width 128, 256-byte vocabulary\n"
          f"  {vision}: CLIP-style ViT (64 px, patch 16: 16 tokens), random, frozen")

    step("train.py")
    train_dir = os.path.join(data, "train", "processed")
    run([python, "train.py", "--base_language_model", llm, "--base_vision_model", vision,
         "--image_map", f"{train_dir}/image_map.json", "--captions_file", f"{train_dir}/captions.json",
         "--output_dir", out, "--llm_mode", "full",
         "--max_steps", str(args.steps), "--per_device_train_batch_size", str(DEFAULTS["batch_size"]),
         "--learning_rate", str(DEFAULTS["learning_rate"]),
         "--lr_scheduler_type", "cosine", "--warmup_steps", "0.05",
         "--logging_steps", str(max(1, min(25, args.steps // 10))),
         "--save_strategy", "no", "--report_to", "none", "--seed", str(args.seed), "--auto_resume", "false",
         "--dataloader_num_workers", "1", "--disable_tqdm", "true"], os.path.join(data, "train.log"))
    state = json.load(open(os.path.join(out, "trainer_state.json")))["log_history"]
    curve = [h["loss"] for h in state if "loss" in h]
    print(f"  loss {curve[0]:.3f} -> {curve[-1]:.3f} over {args.steps} steps; curve in {out}/loss.png")

    step("eval.py")
    test_dir = os.path.join(data, "test", "processed")
    stdout = run([python, "eval.py", "--model_weights", out, "--image_map", f"{test_dir}/image_map.json",
                  "--captions_file", f"{test_dir}/captions.json", "--batch_size", "50", "--max_new_tokens", "48",
                  "--no_progress"], os.path.join(data, "eval.log"))
    results = json.loads(stdout.strip().splitlines()[-1])

    step("examples")
    predictions = [json.loads(line) for line in open(os.path.join(out, "eval_predictions.jsonl"), encoding="utf-8")]
    for row in predictions[:3] + predictions[-3:]:
        mark = "✓" if row["prediction"].strip() == row["reference"].strip() else "✗"
        print(f"  {row['images'][0]}  Q: {row['question']}\n      A: {row['prediction']}  {mark}")
    by_source = [[r for r in predictions if r["source"] == s] for s in ("zh", "en")]
    grid = draw_grid([r for pair in zip(*(rows[:12] for rows in by_source), strict=False) for r in pair],
                     os.path.join(out, "heldout_grid.png"))
    times["end"] = time.time()
    names = list(times)
    seconds = {names[i]: round(times[names[i + 1]] - times[names[i]], 1) for i in range(len(names) - 1)}
    per_source = {k: v["exact_match"] for k, v in results["per_source"].items()}
    print(f"\n  exact match on {results['n']} held-out questions: {results['exact_match']:.1%} "
          f"(zh {per_source.get('zh', 0):.1%}, en {per_source.get('en', 0):.1%})")
    print(f"  grid of held-out answers: {grid}")
    print(f"  seconds per step: {seconds}; total {sum(seconds.values()):.0f} s")
    print(f"  try it: sh test.sh   or   python test.py --model_weights {out} --image_path test_img/2.jpg "
          "--prompt \"What shapes are in the image?\"")
    print(json.dumps({"exact_match": results["exact_match"], "per_source": per_source, "seconds": seconds,
                      "steps": args.steps, "seed": args.seed}, ensure_ascii=False))


if __name__ == "__main__":
    main()
