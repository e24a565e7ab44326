"""train.py CONFIG.yaml|.json: a file of arguments parses as the same flags on the command line, flags override it,
`base:` chains, an unknown key is one sentence and exit 2; the recipes in configs/ parse; train.sh passes CONFIG on."""

import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
from transformers import HfArgumentParser

import train
from training.arguments import DataArguments, ModelArguments, VLMTrainingArguments, parse_arguments

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["stage1", "stage2", "qlora", "packing", "anyres"]


def parse(argv):
    parser = HfArgumentParser((ModelArguments, DataArguments, VLMTrainingArguments))
    *parsed, given = parse_arguments(parser, argv)
    return [asdict(part) for part in parsed], given


def comparable(parsed):
    """TrainingArguments fields that hold the moment or the process (logging_dir's timestamp) are left out."""
    model, data, args = parsed
    return model, data, {k: v for k, v in args.items() if k not in ("logging_dir",)}


FLAGS = {"base_language_model": "llm", "base_vision_model": "clip", "output_dir": "out", "learning_rate": "1e-3",
         "lora_rank": "16", "packing": "true", "lr_scheduler_type": "cosine", "report_to": ["none"],
         "target_modules": "q_proj|v_proj", "warmup_steps": "0.03", "data_store": "false", "max_steps": "7"}


def as_argv(values: dict) -> list[str]:
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", *(value if isinstance(value, list) else [value])]
    return argv


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_parses_as_the_same_flags(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(FLAGS))
    else:  # YAML's own types: numbers, booleans, a list; 1e-3 is a string to PyYAML, converted as a flag is
        path.write_text("base_language_model: llm\nbase_vision_model: clip\noutput_dir: out\nlearning_rate: 1e-3\n"
                        "lora_rank: 16\npacking: true\nlr_scheduler_type: cosine\nreport_to: [none]\n"
                        "target_modules: q_proj|v_proj\nwarmup_steps: 0.03\ndata_store: false\nmax_steps: 7\n")
    from_file, given = parse([str(path)])
    from_flags, _ = parse(as_argv(FLAGS))
    assert comparable(from_file) == comparable(from_flags)
    assert from_file[0]["lora_rank"] == 16 and from_file[2]["learning_rate"] == 1e-3 and from_file[1]["packing"]
    assert from_file[1]["data_store"] is False and given == set(FLAGS)


def test_command_line_flags_override_the_file_and_base_chains(tmp_path):
    (tmp_path / "base.yaml").write_text("base_language_model: llm\nbase_vision_model: clip\nlora_rank: 16\n"
                                        "learning_rate: 1.0e-4\noutput_dir: out\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nlora_rank: 32\n")
    (model, _, args), given = parse([str(tmp_path / "child.yaml"), "--learning_rate", "5e-5"])
    assert model["lora_rank"] == 32 and args["learning_rate"] == 5e-5 and model["base_vision_model"] == "clip"
    assert {"lora_rank", "learning_rate", "base_vision_model"} <= given
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="comes back to it"):
        parse([str(tmp_path / "loop.yaml")])


def test_an_unknown_key_is_one_sentence_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("base_language_model: llm\nbase_vision_model: clip\nlora_rnak: 16\n")
    assert train.main([str(path), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: 'lora_rnak' is not an argument of train.py (python train.py --help lists them)\n"
    path.write_text("- a list\n")
    assert train.main([str(path)]) == 2
    assert "must map argument names to values" in capsys.readouterr().err
    path.write_text("key: [unclosed\n")
    assert train.main([str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path} is not valid YAML")
    assert train.main([str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", RECIPES)
def test_the_recipes_in_configs_parse(name):
    """Each recipe parses into valid arguments (TrainingArguments' own checks run) with what train.sh gives."""
    (model, data, args), _ = parse([str(ROOT / "configs" / f"{name}.yaml")])
    assert model["base_language_model"] == "Qwen/Qwen-7B-Chat" and args["output_dir"].startswith("weights/")
    expected = {"stage1": ("frozen", 1e-3), "stage2": ("lora", 3e-5), "qlora": ("qlora", 3e-5),
                "packing": ("lora", 3e-5), "anyres": ("lora", 3e-5)}[name]
    assert (model["llm_mode"], args["learning_rate"]) == expected
    assert data["packing"] == (name == "packing") and (model["image_aspect_ratio"] == "anyres") == (name == "anyres")
    if name != "stage1":
        assert model["lora_rank"] == 128 and args["feature_proj_lr"] == 1e-4 and args["num_train_epochs"] == 2


def test_stage2_file_equals_train_sh_stage2(tmp_path):
    """configs/stage2.yaml is the recipe train.sh's STAGE=2 spells out in flags (train.sh run with a stand-in
    interpreter that prints its arguments)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nshift 2\nwhile [ "$1" != train.py ]; do shift; done\nshift\nfor a in "$@"; do '
                    'printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("LLM", "VISION", "OUTPUT_DIR", "CONFIG")}
    flags = subprocess.run(["sh", "train.sh"], cwd=ROOT, env=dict(env, PYTHON=str(fake), STAGE="2",
                                                                    OUTPUT_DIR="weights/train_stage2",
                                                                    INIT_PROJECTOR="weights/train_stage1"),
                           capture_output=True, text=True, check=True).stdout.splitlines()
    from_sh, _ = parse(flags)
    from_file, _ = parse([str(ROOT / "configs" / "stage2.yaml")])
    assert comparable(from_sh) == comparable(from_file)
    with_config = subprocess.run(["sh", "train.sh", "--max_steps", "3"], cwd=ROOT, capture_output=True, text=True,
                                 env=dict(env, PYTHON=str(fake), CONFIG="configs/qlora.yaml", OUTPUT_DIR="w/x"),
                                 check=True).stdout.splitlines()
    assert with_config == ["configs/qlora.yaml", "--output_dir", "w/x", "--max_steps", "3"]
