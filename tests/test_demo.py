"""The CPU demo: the synthetic task follows its spec, eval.py scores correctly, a short demo runs."""

import random

import pytest
import torch

import eval as evaluate
from demo.synthetic import BACKGROUND, COLORS, MIN_GAP, SIDE, answer, render, sample_scene
from evaluation import conversations


@pytest.mark.parametrize("size", [64, 96, 256])
def test_scenes_follow_the_spec(size):
    rng = random.Random(size)
    counts = {1: 0, 2: 0}
    for _ in range(300):
        background, shapes = sample_scene(rng, size)
        counts[len(shapes)] += 1
        assert all(BACKGROUND[0] <= c <= BACKGROUND[1] for c in background)
        assert len({s.color for s in shapes}) == len(shapes)
        for s in shapes:
            x0, y0, x1, y1 = s.box
            side = x1 - x0 + 1
            assert y1 - y0 + 1 == side and SIDE[0] * size - 0.5 <= side <= SIDE[1] * size
            assert 0 <= x0 and 0 <= y0 and x1 < size and y1 < size
        if len(shapes) == 2:
            a, b = shapes
            assert a.center_x < b.center_x and b.center_x - a.center_x >= MIN_GAP * size
            assert a.box[2] < b.box[0] or b.box[2] < a.box[0] or a.box[3] < b.box[1] or b.box[3] < a.box[1]
        image = render(background, shapes, size)
        assert image.getpixel((0, 0)) in {background} | {COLORS[s.color][1] for s in shapes}
        for s in shapes:  # the colour is exact where the shape surely is
            x0, y0, x1, y1 = s.box
            inside = ((x0 + x1) // 2, (y0 + 3 * y1) // 4 if s.shape == "triangle" else (y0 + y1) // 2)
            assert image.getpixel(inside) == COLORS[s.color][1]
    assert counts[1] > 50 and counts[2] > 50


def test_answers_list_shapes_left_to_right():
    from demo.synthetic import Placed

    left, right = Placed("circle", "red", (0, 0, 9, 9)), Placed("square", "orange", (30, 0, 39, 9))
    assert answer([left, right], "zh") == "红色和橙色"
    assert answer([left, right], "en") == "a red circle and an orange square"
    assert answer([right], "en") == "an orange square" and answer([left], "zh") == "红色"


def test_eval_scores_a_hand_made_set():
    predictions = ["the cat sat on the mat", "红色和蓝色", "a red circle", "  红色  "]
    references = ["the cat sat on a mat", "红色和蓝色", "a red circle", "红色"]
    results = conversations.score(predictions, references, ["en", "zh", "en", "zh"])
    assert results["n"] == 4 and results["exact_match"] == 0.75
    assert results["per_source"]["zh"]["exact_match"] == 1.0 and results["per_source"]["en"]["exact_match"] == 0.5
    # BLEU-4 of one sentence: precisions 5/6, 3/5, 2/4, 1/3, same length -> (1/12) ** (1/4)
    alone = conversations.score(predictions[:1], references[:1], ["en"])
    assert alone["bleu4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    assert conversations.score(["红色和蓝色"], ["红色和蓝色"], ["zh"])["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert conversations.tokenize("红色和 Blue!") == "红 色 和 blue !"


def test_eval_rejects_bad_input(tmp_path, capsys):
    assert evaluate.main(["--model_weights", str(tmp_path), "--image_map", str(tmp_path / "x.json"),
                          "--captions_file", str(tmp_path / "y.json")]) == 2
    assert "data file not found" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_eval_and_webui_refuse_a_missing_gpu(tmp_path, capsys):
    import webui

    for main, data in ((evaluate.main, ["--image_map", "x", "--captions_file", "y"]), (webui.main, [])):
        assert main(["--model_weights", str(tmp_path), "--device", "cuda", *data]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --device cuda was asked for, but this machine has no CUDA GPU") and (
            err.count("\n") == 1)


def test_device_and_dtype_choice():
    from model.device import pick_device, pick_dtype

    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert pick_device("cpu") == cpu
    assert pick_dtype("auto", cpu) == torch.float32 and pick_dtype("auto", mps) == torch.float16
    assert pick_dtype("bf16", cpu) == torch.bfloat16 and pick_dtype("fp16", cpu) == torch.float16
    # torch's names too, as lmms-eval's llava_hf takes them (--model_args dtype=float32)
    assert [pick_dtype(n, cpu) for n in ("float32", "bfloat16", "float16")] == [torch.float32, torch.bfloat16,
                                                                              torch.float16]
    with pytest.raises(ValueError, match="dtype 'float8' is not one of auto, bf16, fp16, fp32"):
        pick_dtype("float8", cpu)
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        assert pick_device("auto") == cpu
