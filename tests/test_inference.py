"""test.py (single, streamed, batch, interactive, bad input), test.sh, and the web UI over HTTP."""

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from PIL import Image
from tiny import save_tiny_clip, save_tiny_qwen

from model import IMAGE_MARKER, VisionLanguageModel, VLMConfig, load_checkpoint, save_checkpoint

spec = importlib.util.spec_from_file_location("vlm_test_cli", "test.py")  # `import test` is the stdlib's
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny full-LLM checkpoint whose random LLM is kept off special ids, so answers have text."""
    root = tmp_path_factory.mktemp("infer")
    config = VLMConfig(llm=save_tiny_qwen(root / "qwen"), vision=save_tiny_clip(root / "clip"), llm_mode="full")
    torch.manual_seed(0)
    model = VisionLanguageModel.build(config).apply_trainable_modes()
    with torch.no_grad():
        model.llm.get_output_embeddings().weight[256:] = 0
    save_checkpoint(model, str(root / "ckpt"))
    save_checkpoint(VisionLanguageModel.build(replace(config, llm_mode="lora", lora_rank=4)).apply_trainable_modes(),
                    str(root / "lora"))
    images = root / "images"
    images.mkdir()
    for i, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (48, 48), color).save(images / f"{i}.png")
    return {"ckpt": str(root / "ckpt"), "lora": str(root / "lora"), "images": images, "root": root,
            "qwen": config.llm}


def run(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def single(capsys, ckpt, prompt, *extra):
    return run(capsys, "--model_weights", ckpt["ckpt"], "--image_path", str(ckpt["images"] / "0.png"),
               "--prompt", prompt, "--max_new_tokens", "12", *extra)


def test_answers_streamed_equal_non_streamed(ckpt, capsys):
    code, streamed, _ = single(capsys, ckpt, f"{IMAGE_MARKER}what colour?")
    assert code == 0
    code, plain, _ = single(capsys, ckpt, f"{IMAGE_MARKER}what colour?", "--no_stream")
    assert code == 0 and plain.strip() and streamed == plain
    model = load_checkpoint(ckpt["ckpt"])
    expected = model.answer([[{"role": "user", "content": f"{IMAGE_MARKER}what colour?"}]],
                            [[Image.open(ckpt["images"] / "0.png").convert("RGB")]], max_new_tokens=12)[0]
    assert plain.strip() == expected


def test_image_token_is_inserted_before_the_question(ckpt, capsys):
    _, with_marker, _ = single(capsys, ckpt, f"{IMAGE_MARKER}what colour?", "--no_stream")
    code, without, err = single(capsys, ckpt, "what colour?", "--no_stream")
    assert code == 0 and without == with_marker
    assert err.count("no <|extra_0|>") == 1


def test_batch_mode_matches_single_runs(ckpt, capsys, tmp_path):
    out = tmp_path / "answers.jsonl"
    code, _, _ = run(capsys, "--model_weights", ckpt["ckpt"], "--image_path", str(ckpt["images"]),
                     "--prompt", "what colour?", "--output", str(out), "--batch_size", "2", "--max_new_tokens", "12")
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0.png", "1.png", "2.png"]
    for row in rows:
        _, alone, _ = run(capsys, "--model_weights", ckpt["ckpt"], "--image_path", row["image"], "--prompt",
                          "what colour?", "--no_stream", "--max_new_tokens", "12")
        assert row["answer"] == alone.strip()
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "image": r["image"], "question": "what colour?"}) + "\n"
                                 for i, r in enumerate(rows)))
    code, _, _ = run(capsys, "--model_weights", ckpt["ckpt"], "--questions", str(questions), "--output",
                     str(tmp_path / "a2.jsonl"), "--max_new_tokens", "12")
    assert code == 0
    assert [json.loads(line)["answer"] for line in (tmp_path / "a2.jsonl").read_text().splitlines()] == [
        r["answer"] for r in rows]


def test_interactive_chat_keeps_history_and_adds_an_image(ckpt, capsys, monkeypatch):
    second = ckpt["images"] / "1.png"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"what colour?\nand now?\n/image {second}\nthis one?\n/exit\n"))
    code, out, err = run(capsys, "--model_weights", ckpt["ckpt"], "--image_path", str(ckpt["images"] / "0.png"),
                         "--interactive", "--no_stream", "--max_new_tokens", "6")
    assert code == 0 and "(image added: 1 with the next question)" in err
    answers = out.strip().split("\n")
    assert len(answers) == 3
    model = load_checkpoint(ckpt["ckpt"])
    img0, img1 = (Image.open(ckpt["images"] / f"{i}.png").convert("RGB") for i in (0, 1))
    history = [{"role": "user", "content": f"{IMAGE_MARKER}what colour?"}, {"role": "assistant", "content": answers[0]},
               {"role": "user", "content": "and now?"}, {"role": "assistant", "content": answers[1]},
               {"role": "user", "content": f"{IMAGE_MARKER}this one?"}]
    assert model.answer([history], [[img0, img1]], max_new_tokens=6)[0] == answers[2]


def test_bad_input_gives_one_sentence_and_exit_2(ckpt, capsys, tmp_path):
    (tmp_path / "notimage.jpg").write_text("hello")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for name in os.listdir(ckpt["ckpt"]):
        if name != "projector.safetensors":
            os.symlink(os.path.join(ckpt["ckpt"], name), incomplete / name)
    wide = save_tiny_qwen(tmp_path / "wide", hidden_size=96, kv_channels=24)
    capsys.readouterr()  # the save's progress bar
    image = str(ckpt["images"] / "0.png")
    hi = f"{IMAGE_MARKER}hi"
    cases = {
        "image file not found": ["--image_path", str(tmp_path / "missing.jpg"), "--prompt", hi],
        "cannot decode image": ["--image_path", str(tmp_path / "notimage.jpg"), "--prompt", hi],
        "checkpoint folder not found": ["--model_weights", str(tmp_path / "nope"), "--image_path", image,
                                        "--prompt", hi],
        "projector.safetensors is missing": ["--model_weights", str(incomplete), "--image_path", image,
                                             "--prompt", hi],
        "the prompt is empty": ["--image_path", image, "--prompt", "  "],
        "no CUDA GPU": ["--image_path", image, "--prompt", hi, "--device", "cuda"],
        "holds 2 image marker(s) (<|extra_0|>) but 1 image(s)": ["--image_path", image, "--prompt",
                                                                f"{IMAGE_MARKER}{IMAGE_MARKER}hi"],
        f"trained on {ckpt['qwen']} (hidden size 64), but the base LLM {wide} has hidden size 96":
            ["--model_weights", ckpt["lora"], "--image_path", image, "--prompt", hi, "--base_language_model", wide],
    }
    for message, args in cases.items():
        if torch.cuda.is_available() and message == "no CUDA GPU":
            continue
        full = args if "--model_weights" in args else ["--model_weights", ckpt["ckpt"], *args]
        code, out, err = run(capsys, *full)
        assert code == 2, message
        assert message in err and err.startswith("error: ") and err.count("\n") == 1, repr(err)
        assert "Traceback" not in err


def test_questions_with_a_bad_image_fail_before_the_model_loads(ckpt, capsys, tmp_path, monkeypatch):
    """Every image of --questions is checked up front: a missing one on the last of 13 lines is named by its line,
    and no model is loaded (loading would fail the test)."""
    import model.device

    def no_loading(args):
        raise AssertionError("the model was loaded before the questions were checked")

    monkeypatch.setattr(model.device, "load_for_inference", no_loading)
    rows = [{"image": str(ckpt["images"] / f"{i % 3}.png"), "question": "what colour?"} for i in range(12)]
    rows.append({"image": str(tmp_path / "gone.png"), "question": "what colour?"})
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(capsys, "--model_weights", ckpt["ckpt"], "--questions", str(questions), "--batch_size", "4",
                       "--output", str(tmp_path / "a.jsonl"))
    assert code == 2 and err == f"error: {questions} line 13: image file not found: {tmp_path / 'gone.png'}\n"
    assert not (tmp_path / "a.jsonl").exists()


def test_an_image_gone_bad_mid_run_keeps_the_answers_so_far(ckpt, capsys, tmp_path, monkeypatch):
    """Checked up front, then corrupted before its batch: the answers before it are written, its line is named."""
    images = [tmp_path / f"{i}.png" for i in range(5)]
    for i, path in enumerate(images):
        Image.new("RGB", (40, 40), (50 * i, 0, 0)).save(path)
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "image": str(p), "question": "what colour?"}) + "\n"
                                 for i, p in enumerate(images)))
    import visual

    loaded, real = [], visual.load_image

    def load_image(path):  # the fifth image is truncated once the first batch is answered
        loaded.append(path)
        if len(loaded) == 3:
            images[4].write_bytes(images[4].read_bytes()[:30])
        return real(path)

    monkeypatch.setattr(visual, "load_image", load_image)
    out = tmp_path / "a.jsonl"
    code, _, err = run(capsys, "--model_weights", ckpt["ckpt"], "--questions", str(questions), "--batch_size", "2",
                       "--output", str(out), "--max_new_tokens", "4")
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and last.startswith(f"error: {questions} line 5: cannot decode image {images[4]}")
    assert last.endswith(f"the 4 answers before it are in {out}")
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [0, 1, 2, 3]
    assert "Loading weights" not in err  # no library bar for a short command (common/quiet.py)


def test_eval_output_dir_leaves_the_checkpoint_as_it_was(ckpt, capsys, tmp_path):
    """eval.py --output_dir D writes only under D; without it, replacing earlier results is said."""
    import hashlib

    from tiny import write_color_dataset

    import eval as evaluate

    def contents(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    image_map, captions = write_color_dataset(tmp_path / "heldout", n=4)
    checkpoint = tmp_path / "ckpt"
    os.symlink(ckpt["ckpt"], checkpoint)  # a fresh folder name: earlier tests' results stay out of it
    before = contents(checkpoint.resolve())
    for name in ("a", "b"):
        code = evaluate.main(["--model_weights", str(checkpoint), "--image_map", image_map, "--captions_file",
                              captions, "--output_dir", str(tmp_path / name), "--max_new_tokens", "4"])
        assert code == 0
        assert sorted(os.listdir(tmp_path / name)) == ["eval_predictions.jsonl", "eval_results.json"]
    assert contents(checkpoint.resolve()) == before and "replacing" not in capsys.readouterr().err
    code = evaluate.main(["--model_weights", str(checkpoint), "--image_map", image_map, "--captions_file", captions,
                          "--output_dir", str(tmp_path / "a"), "--max_new_tokens", "4"])
    assert code == 0 and f"note: replacing the earlier {tmp_path / 'a' / 'eval_results.json'}" in (
        capsys.readouterr().err)


def test_test_sh_original_command_line(ckpt):
    """The original flags (--base_value_model among them) through test.sh, in a real process."""
    env = dict(os.environ, PYTHON=sys.executable, MODEL_WEIGHTS=ckpt["ckpt"], IMAGE=str(ckpt["images"] / "2.png"),
               PYTHONPATH=os.getcwd())
    result = subprocess.run(["sh", "test.sh", "--base_value_model", str(ckpt["root"] / "clip"),
                             "--max_new_tokens", "8", "--no_stream"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_ui_answers_over_http(ckpt):
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    import webui

    model = load_checkpoint(ckpt["ckpt"])
    app = webui.build_app(model, max_new_tokens=12)
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        image = ckpt["images"] / "0.png"
        reply = client.predict({"text": "what colour?", "files": [handle_file(str(image))]}, api_name="/chat")
        expected = model.answer([[{"role": "user", "content": f"{IMAGE_MARKER}what colour?"}]],
                                [[Image.open(image).convert("RGB")]], max_new_tokens=12)[0]
        assert webui.text_of(reply).strip() == expected and expected
    finally:
        app.close()
