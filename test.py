"""Ask a trained VLM about images.

    python test.py --model_weights CKPT --image_path IMG --prompt "这幅图像描述了什么？<|extra_0|>"
    python test.py --model_weights CKPT --image_path A.jpg B.jpg --prompt "<|extra_0|>和<|extra_0|>有什么不同？"
    python test.py --model_weights CKPT --video_path clip.mp4 --prompt "<|extra_1|>What happens here?"
    python test.py --model_weights CKPT --image_path IMG --interactive          # chat; /image PATH adds one, /exit
    python test.py --model_weights CKPT --image_path FOLDER --prompt Q --output answers.jsonl
    python test.py --model_weights CKPT --questions questions.jsonl --output answers.jsonl

The base-model flags are optional (the checkpoint names its base models); given, they override them,
e.g. with local copies. Bad input ends with one sentence on stderr and exit code 2.
"""

import argparse
import json
import os
import sys
import threading

import visual  # its names load on first use (PIL), after --help
from common import IMAGE_MARKER, VIDEO_MARKER, atomic_file, exits_on
from common.cli import add_device_arguments
from common.quiet import quiet_libraries

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class UsageError(ValueError):
    """Bad input from the command line."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_weights", required=True, help="checkpoint folder (ours or the original project's)")
    p.add_argument("--base_language_model", help="override the checkpoint's base LLM (hub id or folder)")
    p.add_argument("--base_vision_model", "--base_value_model", dest="base_vision_model",
                   help="override the checkpoint's vision encoder (--base_value_model is the original name)")
    p.add_argument("--image_path", nargs="+", help="image file(s), one marker each in the prompt (in order); or one "
                                                    "folder of images for batch answers")
    p.add_argument("--video_path", nargs="+", help=f"video file(s) (mp4, webm, mkv, avi, mov, gif) or frame "
                                                    f"folders, one {VIDEO_MARKER} each in the prompt (in order); "
                                                    "frames are sampled as the checkpoint was trained")
    p.add_argument("--prompt", default="", help=f"the question; each {IMAGE_MARKER} marks where an image goes, each "
                                                f"{VIDEO_MARKER} a video")
    p.add_argument("--questions", help="JSONL of {\"image\": path, \"question\": str[, \"id\": ...]} to answer")
    p.add_argument("--output", default="answers.jsonl", help="JSONL written by the batch modes")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--interactive", action="store_true", help="multi-turn chat in the terminal")
    p.add_argument("--system", help="system prompt (default: the checkpoint's)")
    p.add_argument("--no_stream", action="store_true", help="print the answer at the end, not token by token")
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=1.0, help="used with --do_sample")
    p.add_argument("--top_p", type=float, default=1.0, help="used with --do_sample")
    p.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    add_device_arguments(p)
    return p.parse_args(argv)


def with_image_marker(prompt: str, n_images: int, warn=True, n_videos: int = 0) -> str:
    """One marker per image (and per video), in order. A prompt without any gets them before the question."""
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    for marker, n, what in ((VIDEO_MARKER, n_videos, "video"), (IMAGE_MARKER, n_images, "image")):
        count = prompt.count(marker)
        if count == 0 and n:
            if warn:
                print(f"note: the prompt has no {marker}; the {what}(s) go before the question", file=sys.stderr)
            prompt = marker * n + prompt
        elif count != n:
            raise UsageError(f"the prompt holds {count} {what} marker(s) ({marker}) but {n} {what}(s) are given: use "
                             f"one marker per {what}")
    return prompt


def in_marker_order(prompt: str, images: list, videos: list) -> list:
    """The images and videos in the order of their markers in the prompt."""
    from model.processor import MARKERS  # loaded with the model by then

    images, videos = iter(images), iter(videos)
    return [next(videos) if marker == VIDEO_MARKER else next(images) for marker in MARKERS.findall(prompt)]


def load_videos(model, paths: list[str]) -> list:
    """The videos' frames, sampled as the checkpoint was trained."""
    from visual.video import load_video

    videos = model.image_inputs.videos
    if paths and videos is None:
        raise UsageError("this checkpoint was trained without videos, so it cannot take them")
    return [load_video(path, videos.frames, videos.fps) for path in paths]


def generation_kwargs(args) -> dict:
    kwargs = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "do_sample": args.do_sample}
    if args.do_sample:
        kwargs.update(temperature=args.temperature, top_p=args.top_p)
    return kwargs


def answer_one(model, messages, images, args) -> str:
    """Answers the last user turn, streaming to stdout unless --no_stream (beam search cannot stream)."""
    kwargs, out = generation_kwargs(args), sys.stdout
    if args.no_stream or args.num_beams > 1:
        text = model.answer([messages], [images], **kwargs)[0]
        print(text, file=out, flush=True)
        return text
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.update(text=model.answer([messages], [images], streamer=streamer,
                                                                             **kwargs)[0]))
    thread.start()
    for piece in streamer:
        print(piece, end="", file=out, flush=True)
    thread.join()
    print(file=out, flush=True)
    return result["text"]


def read_questions(args) -> list[tuple[str, dict]]:
    """(where, row) of every question: `FILE line N` of --questions, or the image's path in a folder. Every image is
    checked now (its header read), so that a bad line fails before the model loads, with its line number."""
    if args.questions:
        if not os.path.isfile(args.questions):
            raise UsageError(f"questions file not found: {args.questions}")
        rows = []
        with open(args.questions, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                        images = {"images": row["images"]} if "images" in row else {"image": row["image"]}
                        rows.append((f"{args.questions} line {n}", {"id": row.get("id", n), **images,
                                                                     "question": row["question"]}))
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise UsageError(f"{args.questions} line {n} is not {{\"image\": ..., \"question\": ...}} "
                                         "(or \"images\": [...])") from None
    else:
        folder = args.image_path[0]
        names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise UsageError(f"no images in folder {folder}")
        rows = [(os.path.join(folder, name), {"id": name, "image": os.path.join(folder, name),
                                              "question": args.prompt}) for name in names]
    for where, row in rows:
        for path in row.get("images", [row.get("image")]):
            try:
                visual.image_size(path)
            except visual.ImageLoadError as e:
                raise UsageError(f"{where}: {e}") from None
    return rows


def answer_batch(model, args, rows: list[tuple[str, dict]]):
    """Answers read_questions' rows in batches. If an image goes bad mid-run (changed since it was checked), the
    answers so far are written and its line is named."""
    from tqdm import tqdm

    done, failure = 0, None
    with atomic_file(args.output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for start in tqdm(range(0, len(rows), args.batch_size), desc="answering", unit="batch"):
            chunk, images = rows[start:start + args.batch_size], []
            for where, row in chunk:
                try:
                    images.append([visual.load_image(p) for p in row.get("images", [row.get("image")])])
                except visual.ImageLoadError as e:
                    failure = UsageError(f"{where}: {e}; the {done} answers before it are in {args.output}")
                    break
            if failure:
                break
            conversations = [[{"role": "user", "content": with_image_marker(row["question"], len(imgs), warn=False)}]
                             for (_, row), imgs in zip(chunk, images, strict=True)]
            for (_, row), text in zip(chunk, model.answer(conversations, images, **generation_kwargs(args)),
                                      strict=True):
                f.write(json.dumps({**row, "answer": text}, ensure_ascii=False) + "\n")
            done += len(chunk)
    if failure:
        raise failure
    print(f"wrote {len(rows)} answers to {args.output}", file=sys.stderr)


def chat(model, args, images_given, videos_given=()):
    """Multi-turn chat; the history, images included, stays in the chat template. /image PATH adds an image and
    /video PATH a video, which go with the next question (where it has markers, or before it)."""
    messages, images, pending, pending_videos = [], [], list(images_given), list(videos_given)
    print("chat: type a question; /image PATH to add an image, /video PATH a video; /exit or Ctrl-D to quit",
          file=sys.stderr)
    for line in sys.stdin:
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if line.startswith(("/image", "/video")):
            try:
                if line.startswith("/video"):
                    pending_videos += load_videos(model, [line[len("/video"):].strip()])
                    print(f"(video added: {len(pending_videos)} with the next question)", file=sys.stderr)
                else:
                    pending.append(visual.load_image(line[len("/image"):].strip()))
                    print(f"(image added: {len(pending)} with the next question)", file=sys.stderr)
            except (visual.ImageLoadError, UsageError) as e:
                print(f"error: {e}", file=sys.stderr)
            continue
        if not line:
            continue
        try:
            content = with_image_marker(line, len(pending), warn=False, n_videos=len(pending_videos))
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": content})
        images += in_marker_order(content, pending, pending_videos)
        pending, pending_videos = [], []
        messages.append({"role": "assistant", "content": answer_one(model, messages, images, args)})


@exits_on(FileNotFoundError, ValueError, OSError)  # ImageLoadError and UsageError are ValueErrors
def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    import torch  # after parsing: --help answers without torch and transformers

    from model.device import load_for_inference, pick_device
    from visual.video import video_info

    pick_device(args.device)  # a missing GPU fails before anything loads
    paths = args.image_path or []
    folder = len(paths) == 1 and os.path.isdir(paths[0])
    if len(paths) > 1 and any(os.path.isdir(p) for p in paths):
        raise UsageError("--image_path takes image files, or one folder")
    batch_mode = bool(args.questions) or folder
    if batch_mode and args.video_path:
        raise UsageError("--video_path goes with --prompt or --interactive, not the batch modes")
    rows = read_questions(args) if batch_mode else []  # bad input fails before the model loads
    images = [] if folder else [visual.load_image(p) for p in paths]
    video_paths = args.video_path or []
    for path in video_paths:  # a missing or undecodable video fails before the model loads
        video_info(path)
    if not (args.interactive or batch_mode):
        prompt = with_image_marker(args.prompt, len(images), n_videos=len(video_paths))
    torch.manual_seed(args.seed)
    model = load_for_inference(args)
    if args.system is not None:
        model.processor.system_prompt = args.system
    videos = load_videos(model, video_paths)
    if args.interactive:
        chat(model, args, images, videos)
    elif batch_mode:
        answer_batch(model, args, rows)
    else:
        answer_one(model, [{"role": "user", "content": prompt}], in_marker_order(prompt, images, videos), args)


if __name__ == "__main__":
    sys.exit(main())
