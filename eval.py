"""Score a checkpoint on held-out conversations, or on a public benchmark:

    python eval.py --model_weights DIR --image_map FILE --captions_file FILE [--max_new_tokens N] [--batch_size B]
    python eval.py --model_weights DIR --benchmark pope|mme|mmbench|textvqa|scienceqa|gqa --data PATH [--split S]
    python eval.py --benchmark NAME --data PATH --predictions FILE.jsonl      # score predictions, no model

Each sample's last user turn is answered (given the earlier turns) and compared with its reference
assistant turn: exact match after stripping whitespace, and BLEU-4, CIDEr-D and ROUGE-L (pycocoevalcap,
Chinese split into characters), overall and per source. Writes eval_results.json and
eval_predictions.jsonl into --output_dir (default: the checkpoint folder; replacing earlier ones is said on stderr);
the last stdout line is the results as one JSON object.
Benchmarks (evaluation/) are answered in batches of similar prompt length into predictions written as LLaVA's
scripts write them (`<name>_predictions.jsonl`, resumed on a rerun, so LLaVA's scorers take them as they are)
and scored with their official rules (`<name>_results.json`, which names the rule); LLaVA's files score here too.
"""

import argparse
import json
import os
import sys

from common import atomic_file, exits_on
from common.cli import add_device_arguments
from common.quiet import quiet_libraries
from evaluation.answers import ANSWER_RULES
from evaluation.benchmarks import BENCHMARKS


def write_text(path: str, text: str):
    """Writes atomically; replacing an earlier file of results is said on stderr (--output_dir keeps both)."""
    if os.path.exists(path):
        print(f"note: replacing the earlier {path} (give --output_dir to keep both)", file=sys.stderr)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def evaluate_conversations(args, items: list[dict], model) -> dict:
    from evaluation.conversations import answer_sorted, score

    predictions = answer_sorted(model, items, args.batch_size, args.max_new_tokens, not args.no_progress)
    results = score(predictions, [i["reference"] for i in items], [i["source"] for i in items])
    if "bleu4" not in results:
        print("note: pycocoevalcap is not installed; only exact match is scored", file=sys.stderr)
    rows = [{"id": i["id"], "source": i["source"], "images": i["images"], "question": i["messages"][-1]["content"],
             "reference": i["reference"], "prediction": pred} for i, pred in zip(items, predictions, strict=True)]
    folder = args.output_dir or args.model_weights
    write_text(os.path.join(folder, "eval_predictions.jsonl"),
               "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text(os.path.join(folder, "eval_results.json"), json.dumps(results, indent=2))
    return results


def evaluate_benchmark(args, model) -> dict:
    """One benchmark: answered into LLaVA-layout predictions (resumed where a predictions file exists), or a
    predictions file read as it is; scored; the results JSON beside the predictions and one table."""
    from evaluation.runner import answer_questions, read_predictions

    benchmark = BENCHMARKS[args.benchmark]
    name = benchmark.run_name(args.split)
    questions = benchmark.load(args.data, args.split, args.images, ocr_tokens=args.ocr_tokens)[: args.limit]
    if not questions:
        raise ValueError(f"{args.data} holds no {args.benchmark} question")
    path = args.predictions or os.path.join(args.output_dir or args.model_weights, f"{name}_predictions.jsonl")
    if model is not None:
        answers = answer_questions(model, questions, path, args.batch_size, args.max_new_tokens,
                                   os.path.basename(os.path.normpath(args.model_weights)), not args.no_progress,
                                   benchmark.row_keys)
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"predictions file not found: {path}")
        answers = read_predictions(path, questions, benchmark.row_keys)
    unanswered = [q.question_id for q in questions if q.key not in answers]
    if unanswered:
        raise ValueError(f"{path} answers {len(questions) - len(unanswered)} of {len(questions)} questions "
                         f"(first missing: {unanswered[0]}); run with --model_weights to answer the rest")
    results = {**benchmark.score(questions, answers, args.answer_rule), "predictions": os.path.abspath(path)}
    folder = args.output_dir or os.path.dirname(os.path.abspath(path))  # results and companion files
    benchmark.write_companions(questions, answers, folder, args.split, args.data)
    results_name = os.path.basename(os.path.splitext(path)[0]).removesuffix("_predictions") + "_results.json"
    write_text(os.path.join(folder, results_name), json.dumps(results, indent=2, ensure_ascii=False))
    print("| benchmark | metric | value |\n| --- | --- | --- |")
    for metric, value in benchmark.summary(results):
        print(f"| {name} | {metric} | {value} |")
    print(f"answers read by: {results['rule']}", file=sys.stderr)
    return results


@exits_on(FileNotFoundError, ValueError, OSError)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_weights", help="checkpoint folder (without it, --benchmark only scores --predictions)")
    p.add_argument("--image_map", help="our conversation files: image_map.json ...")
    p.add_argument("--captions_file", help="... and captions.json")
    p.add_argument("--benchmark", choices=sorted(BENCHMARKS),
                   help="a public benchmark instead (see docs/evaluation.md)")
    p.add_argument("--data", help="--benchmark: its file or folder, as published")
    p.add_argument("--split", help="--benchmark: POPE's all (default, one pass)|random|popular|adversarial, MMBench's "
                                   "circular|single, an MME category, ScienceQA's test|val|...")
    p.add_argument("--images", help="--benchmark: the image folder (default: where docs/evaluation.md says)")
    p.add_argument("--predictions", help="--benchmark: predictions JSONL to answer into / resume / score")
    p.add_argument("--output_dir", help="where predictions and results go (default: the checkpoint folder; results "
                                        "of --predictions: beside that file)")
    p.add_argument("--answer_rule", choices=ANSWER_RULES, default="official",
                   help="--benchmark scienceqa|mmbench: how a letter is read from an answer: the benchmark's official "
                        "rule (default), or lenient (free-form answers too)")
    p.add_argument("--ocr_tokens", help="--benchmark textvqa: the Rosetta OCR JSON (TextVQA_Rosetta_OCR_v0.2_val.json) "
                                        "for LLaVA-1.5's 'Reference OCR token' line")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--limit", type=int, help="score only the first N samples")
    p.add_argument("--base_language_model", help="override the checkpoint's base LLM")
    p.add_argument("--base_vision_model", "--base_value_model", dest="base_vision_model")
    p.add_argument("--no_progress", action="store_true")
    add_device_arguments(p)
    args = p.parse_args(argv)
    quiet_libraries()
    from evaluation.conversations import eval_items  # after parsing: --help answers without torch, PIL or tqdm
    from model.device import load_for_inference, pick_device

    if args.benchmark:
        if not args.data:
            raise ValueError("--benchmark needs --data (the benchmark's file or folder)")
        if not (args.model_weights or args.predictions):
            raise ValueError("--benchmark needs --model_weights (to answer) or --predictions (to score)")
    elif not (args.model_weights and args.image_map and args.captions_file):
        raise ValueError("give --model_weights with --image_map and --captions_file, or --benchmark NAME --data PATH")
    if args.benchmark:
        results = evaluate_benchmark(args, load_for_inference(args) if args.model_weights else None)
    else:
        pick_device(args.device)  # a missing GPU fails before anything loads
        items = eval_items(args.image_map, args.captions_file)[: args.limit]  # bad data fails before the model
        results = evaluate_conversations(args, items, load_for_inference(args))
    print(json.dumps(results, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
