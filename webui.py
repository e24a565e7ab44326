"""A Gradio chat with image upload and streaming answers, for one checkpoint folder.

    pip install gradio          # optional: nothing else in the project imports it
    python webui.py --model_weights ./weights/demo [--port 7860] [--host 127.0.0.1] [--share]

It listens on 127.0.0.1 only, unless --host (another interface) or --share (a public gradio.live link)
is given.
"""

import argparse
import importlib.util
import sys
import threading

from transformers import TextIteratorStreamer

from common import IMAGE_MARKER, exits_on
from model.device import add_device_arguments, load_for_inference
from visual import ImageLoadError, load_image


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
            images += [load_image(p) for p in paths]
            content = IMAGE_MARKER * len(paths) + text
            if messages and messages[-1]["role"] == "user":  # an upload and its question arrive as two turns
                messages[-1]["content"] += content
            else:
                messages.append({"role": "user", "content": content})
        elif text:
            messages.append({"role": "assistant", "content": text})
    return messages, images


def build_app(model, max_new_tokens: int = 512):
    import gradio as gr

    def chat(message, history):  # the HTTP endpoint is named after it: /chat
        try:
            messages, images = to_conversation(history, message)
        except ImageLoadError as e:
            yield f"error: {e}"
            return
        if not messages[-1]["content"].replace(IMAGE_MARKER, "").strip():
            yield "Please ask a question about the image."
            return
        streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = threading.Thread(target=model.answer, args=([messages], [images]),
                                  kwargs={"max_new_tokens": max_new_tokens, "streamer": streamer})
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        thread.join()

    return gr.ChatInterface(chat, multimodal=True, title="VLM chat",
                            textbox=gr.MultimodalTextbox(file_types=["image"], placeholder="Upload an image, ask"))


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
    model = load_for_inference(args)
    build_app(model, args.max_new_tokens).queue().launch(server_name=args.host, server_port=args.port,
                                                          share=args.share)


if __name__ == "__main__":
    sys.exit(main())
