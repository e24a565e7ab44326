"""Long runs survive faults: a save killed midway, incomplete checkpoints, images that go bad after
processing, preemption signals and non-finite losses (training/health.py, training/checkpoints.py)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image
from runs import argv, checkpoints, env, max_loss_diff, max_weight_diff, tiny_setup

import train
from model import VisionLanguageModel, load_checkpoint
from training.checkpoints import MANIFEST, incomplete_reason, latest_complete_checkpoint
from training.health import PREEMPTED_EXIT, bad_sample_limit
from training.trainer import VLMTrainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("faults"))


def health(run_dir) -> dict:
    with open(os.path.join(run_dir, "trainer_state.json")) as f:
        return json.load(f)["stateful_callbacks"]["RunHealth"]["attributes"]


# ---- checkpoints: complete or absent ----

def test_a_save_killed_midway_leaves_no_checkpoint_and_the_rerun_resumes(setup, tmp_path, monkeypatch):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    extra = ("--save_steps", "4", "--lora_dropout", "0.1")
    assert train.main(argv(setup, straight, *extra, steps=8)) == 0

    original = VLMTrainer._save_rng_state

    def killed_at_step_8(self, output_dir):  # the model and optimizer are written; then the process dies
        if self.state.global_step == 8:
            raise KeyboardInterrupt("killed while saving")
        original(self, output_dir)

    monkeypatch.setattr(VLMTrainer, "_save_rng_state", killed_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(setup, crashed, *extra, steps=8))
    monkeypatch.undo()
    assert checkpoints(crashed) == ["checkpoint-4"] and (crashed / ".checkpoint-8.partial").is_dir()

    assert train.main(argv(setup, crashed, *extra, steps=8)) == 0
    diff = max_loss_diff(straight, crashed)
    print(f"resume after a killed save: max |loss diff| over 8 steps = {diff:.2g}")
    assert diff < 1e-5
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        assert max_weight_diff(straight, crashed, name) < 1e-6, name
    assert checkpoints(crashed) == ["checkpoint-4", "checkpoint-8"] and not (crashed / ".checkpoint-8.partial").exists()
    assert incomplete_reason(str(crashed / "checkpoint-8")) is None
    assert json.loads((crashed / "checkpoint-8" / MANIFEST).read_text())["files"]["trainer_state.json"] > 0


def test_incomplete_checkpoints_are_passed_over_and_kept(setup, tmp_path, capsys):
    """What a kill left behind before this project's atomic saves: no trainer_state.json, a cut optimizer."""
    run = tmp_path / "run"
    assert train.main(argv(setup, run, "--save_steps", "2", steps=6)) == 0
    (run / "checkpoint-6" / "trainer_state.json").unlink()
    optimizer = run / "checkpoint-4" / "optimizer.pt"
    size = optimizer.stat().st_size
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    path, passed = latest_complete_checkpoint(str(run))
    assert path == str(run / "checkpoint-2")
    assert passed == ["checkpoint-6 (trainer_state.json is missing)",
                      f"checkpoint-4 (optimizer.pt has 100 bytes, not {size})"]
    capsys.readouterr()
    assert train.main(argv(setup, run, "--save_steps", "2", steps=6)) == 0
    assert (f"resuming from {run / 'checkpoint-2'}; passed over incomplete checkpoint-6 (trainer_state.json is "
            "missing), checkpoint-4 (optimizer.pt has 100 bytes") in capsys.readouterr().err
    # nothing was deleted: the incomplete folders were moved aside when their names were needed again
    assert checkpoints(run) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert (run / "incomplete-checkpoint-4" / "optimizer.pt").stat().st_size == 100
    assert (run / "incomplete-checkpoint-6").is_dir()
    # an explicit --resume_from_checkpoint that is incomplete: one sentence, exit 2
    (run / "checkpoint-6" / "projector.safetensors").write_bytes(b"")
    assert train.main(argv(setup, run, "--resume_from_checkpoint", str(run / "checkpoint-6"), steps=6)) == 2
    assert "checkpoint-6 is incomplete: projector.safetensors has 0 bytes" in capsys.readouterr().err


# ---- bad samples ----

def one_image_per_sample(folder, n=12) -> tuple[str, str]:
    """n distinct images, one sample each, so that a bad image is exactly one bad sample."""
    os.makedirs(folder, exist_ok=True)
    image_map, samples = {}, []
    for i in range(n):
        path = os.path.join(folder, f"{i}.png")
        Image.new("RGB", (40, 40), (20 * i, 255 - 20 * i, 128)).save(path)
        image_map[str(i)] = {"path": path}
        samples.append({"id": f"s{i}", "source": "toy", "images": [str(i)], "conversations": [
            {"role": "user", "content": "<|extra_0|>Which image?"}, {"role": "assistant", "content": str(i)}]})
    (folder / "image_map.json").write_text(json.dumps(image_map))
    (folder / "captions.json").write_text(json.dumps(samples))
    return str(folder / "image_map.json"), str(folder / "captions.json")


@pytest.fixture
def damaged(setup, tmp_path):
    """Processed and validated, then image 3 deleted and image 7 truncated (a half-synced copy)."""
    image_map, captions = one_image_per_sample(tmp_path / "data")
    os.unlink(tmp_path / "data" / "3.png")
    data = (tmp_path / "data" / "7.png").read_bytes()
    (tmp_path / "data" / "7.png").write_bytes(data[: len(data) // 2])
    return {**setup, "image_map": image_map, "captions": captions}


def test_bad_images_are_skipped_counted_and_resume_exactly(damaged, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ("--save_steps", "3", "--max_bad_samples", "2")  # the default, 0.1% of 12 samples, allows 1
    assert train.main(argv(damaged, out, *flags, steps=6)) == 0  # 2 epochs of 12 samples
    err = capsys.readouterr().err
    assert "run summary: 2 bad sample(s) skipped" in err
    record = health(out)["bad_samples"]
    assert sorted(record) == ["s3", "s7"]
    assert "image file not found" in record["s3"] and "cannot decode image" in record["s7"]
    with open(out / "trainer_state.json") as f:
        assert [h["bad_samples"] for h in json.load(f)["log_history"] if "loss" in h][-1] == 2

    # resumed from checkpoint-3: the same samples are skipped again, the losses are the same
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    os.rename(out / "checkpoint-3", resumed / "checkpoint-3")
    assert train.main(argv(damaged, resumed, *flags, steps=6)) == 0
    assert max_loss_diff(out, resumed) < 1e-5
    assert sorted(health(resumed)["bad_samples"]) == ["s3", "s7"]


def test_past_max_bad_samples_the_run_stops_with_one_sentence(damaged, tmp_path, capsys):
    result = subprocess.run([sys.executable, "train.py", *argv(damaged, tmp_path / "run", "--max_bad_samples", "1",
                                                               steps=6)],
                            env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 training samples could not be used, more than --max_bad_samples allows (1)" in \
        errors[0]
    assert bad_sample_limit(0.001, 665_000) == 665 and bad_sample_limit(20, 10) == 20
    assert bad_sample_limit(0, 100) == 0
    with pytest.raises(ValueError, match="max_bad_samples"):
        bad_sample_limit(-1, 100)


# ---- preemption ----

def test_sigterm_saves_a_checkpoint_and_the_rerun_matches(setup, tmp_path):
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    steps = 60
    # both runs in processes with the same thread count, so that their float reductions agree to the bit
    run_straight = [sys.executable, "train.py", *argv(setup, straight, "--save_steps", "1000", steps=steps)]
    assert subprocess.run(run_straight, env=env(), capture_output=True, text=True, timeout=600).returncode == 0
    cmd = [sys.executable, "train.py", *argv(setup, preempted, "--save_steps", "1000", steps=steps)]
    proc = subprocess.Popen(cmd, env=env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    logged = 0
    for line in proc.stdout:  # the Trainer prints one dict per logged step
        logged += "'loss'" in line
        if logged == 3:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=600)
    assert proc.returncode == PREEMPTED_EXIT
    (saved,) = checkpoints(preempted)
    step = int(saved.split("-")[1])
    assert 3 <= step < steps and incomplete_reason(str(preempted / saved)) is None
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    diff = max_loss_diff(straight, preempted)
    print(f"SIGTERM at step {step}, then rerun: max |loss diff| over {steps} steps = {diff:.2g}")
    assert diff < 1e-5
    assert max_weight_diff(straight, preempted, "adapter_model.safetensors") < 1e-6


# ---- non-finite losses ----

def nan_on_calls(monkeypatch, calls):
    """VisionLanguageModel.forward returns a NaN loss on the given (1-based) calls."""
    original, count = VisionLanguageModel.forward, [0]

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        count[0] += 1
        if count[0] in calls:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(VisionLanguageModel, "forward", forward)


def test_a_nan_step_is_reported_and_its_update_skipped(setup, tmp_path, monkeypatch, caplog):
    nan_on_calls(monkeypatch, {3})
    out = tmp_path / "run"
    assert train.main(argv(setup, out, "--llm_mode", "full", steps=6)) == 0
    assert "step 3: the loss is NaN or inf; the batch held samples ['c" in caplog.text
    assert health(out)["nonfinite_steps"] == 1
    model = load_checkpoint(str(out))
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN gradient was never applied


def test_nonfinite_steps_in_a_row_stop_the_run_before_saving(setup, tmp_path, monkeypatch, capsys):
    nan_on_calls(monkeypatch, set(range(3, 100)))
    out = tmp_path / "run"
    assert train.main(argv(setup, out, "--save_steps", "1", "--max_nonfinite_steps", "3", steps=10)) == 2
    err = capsys.readouterr().err
    assert "error: the loss was NaN or inf for 3 steps in a row (up to step 5; --max_nonfinite_steps 3)" in err
    assert checkpoints(out) == ["checkpoint-1", "checkpoint-2"]  # nothing saved from a NaN step
