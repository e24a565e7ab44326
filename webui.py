"""A Gradio chat with image upload and streaming answers, for one checkpoint folder.

    pip install gradio          # optional: nothing else in the project imports it
    python webui.py --model_weights ./weights/demo [--port 7860] [--host 127.0.0.1] [--share]

Examples from test_img/ are one click away; temperature (0: greedy), top-p and max new tokens sit under
"Generation"; the header names the checkpoint, its base models, device, precision and decoding loop.

It listens on 127.0.0.1 only, unless --host (another interface) or --share (a public gradio.live link)
is given.
"""

import argparse
import importlib.util
import os
import sys
import threading

import visual  # its names load on first use (PIL), after --help
from common import IMAGE_MARKER, exits_on
from common.cli import add_device_arguments
from common.quiet import quiet_libraries


def file_paths(content) -> list[str]:
    """Image paths in a Gradio message content, whatever shape this Gradio version gives it."""
    if isinstance(content, tuple):  # older Gradio: (path,) for a file message
        return [c for c in content if isinstance(c, str)]
    if isinstance(content, list):  # Gradio 6: a list of parts
        return [p for part in content for p in file_paths(part)]
    if isinstance(content, dict):
        if "path" in content:
            return [content["path"]]
        if isinstance(content.get("file"), dict):
            return file_paths(content["file"])
    return []


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(text_of(part) for part in content)
    if isinstance(content, dict) and content.get("type") == "text":
        return content.get("text", "")
    return ""


def to_conversation(history: list[dict], message: dict) -> tuple[list[dict], list]:
    """Gradio messages (+ the new multimodal message) -> our messages with image markers, and the images."""
    messages, images = [], []
    turns = [*history, {"role": "user", "content": [*({"path": f} for f in message.get("files", [])),
                                                     message.get("text", "")]}]
    for turn in turns:
        paths, text = file_paths(turn["content"]), text_of(turn["content"])
        if turn["role"] == "user":
            images += [visual.load_image(p) for p in paths]
            content = IMAGE_MARKER * len(paths) + text
            if messages and messages[-1]["role"] == "user":  # an upload and its question arrive as two turns
                messages[-1]["content"] += content
            else:
                messages.append({"role": "user", "content": content})
        elif text:
            messages.append({"role": "assistant", "content": text})
    return messages, images


EXAMPLE_QUESTIONS = ["What shapes are in the image?", "图中出现了哪些颜色？", "Describe the image."]


def examples(folder: str = "test_img") -> list[dict]:
    """One clickable example per image of test_img/, each with a question."""
    if not os.path.isdir(folder):
        return []
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    return [{"text": EXAMPLE_QUESTIONS[i % len(EXAMPLE_QUESTIONS)], "files": [os.path.join(folder, name)]}
            for i, name in enumerate(names)]


def describe(model, name: str) -> str:
    cfg, device = model.config, model.llm.device
    decoding = "eager" if model.decoder is None else ("compiled" if model.decoder.compiled else "static")
    return (f"**{name}**: {cfg.llm} + {cfg.vision} ({cfg.llm_mode}), on {device.type} in "
            f"{str(model.llm.dtype).removeprefix('torch.')}, {decoding} decoding")


def build_app(model, max_new_tokens: int = 512, name: str = "checkpoint"):
    import gradio as gr
    from transformers import TextIteratorStreamer

    def chat(message, history, temperature=0.0, top_p=1.0, new_tokens=max_new_tokens):
        """The HTTP endpoint is named after it: /chat. Temperature 0 is greedy decoding."""
        try:
            messages, images = to_conversation(history, message)
        except visual.ImageLoadError as e:
            yield f"error: {e}"
            return
        if not messages[-1]["content"].replace(IMAGE_MARKER, "").strip():
            yield "Please ask a question about the image."
            return
        streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {}
        thread = threading.Thread(target=model.answer, args=([messages], [images]),
                                  kwargs={"max_new_tokens": int(new_tokens), "streamer": streamer, **sampling})
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        thread.join()

    controls = [gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0: greedy)"),
                gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p"),
                gr.Slider(1, max(max_new_tokens, 1), value=max_new_tokens, step=1, label="max new tokens")]
    return gr.ChatInterface(chat, multimodal=True, title="VLM chat", description=describe(model, name),
                            textbox=gr.MultimodalTextbox(file_types=["image"], file_count="multiple",
                                                           placeholder="Upload one or more images, ask"),
                            additional_inputs=controls, additional_inputs_accordion="Generation",
                            examples=[[e, 0.0, 1.0, max_new_tokens] for e in examples()] or None,
                            run_examples_on_click=True, cache_examples=False)


@exits_on(ImportError, FileNotFoundError, ValueError, OSError)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_weights", required=True)
    p.add_argument("--base_language_model")
    p.add_argument("--base_vision_model", "--base_value_model", dest="base_vision_model")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--max_new_tokens", type=int, default=512)
    add_device_arguments(p)
    args = p.parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        raise ImportError("the web UI needs Gradio: pip install gradio")
    quiet_libraries()
    from model.device import load_for_inference  # after parsing: --help answers without torch

    model = load_for_inference(args)
    name = os.path.basename(os.path.normpath(args.model_weights))
    build_app(model, args.max_new_tokens, name).queue().launch(server_name=args.host, server_port=args.port,
                                                          share=args.share)


if __name__ == "__main__":
    sys.exit(main())
