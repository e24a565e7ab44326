"""Data at scale (common/store.py, dataset/mixture.py, dataprocess/webdataset.py): the sample store yields exactly
captions.json's samples and is rebuilt when stale, atomically; exact lengths equal the tokenised lengths; mixtures
draw deterministically and resume exactly; webdataset shards train, shard across ranks and workers, resume, and a
truncated member is a counted bad sample."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import webdataset as wds
from PIL import Image
from runs import argv, env, losses, tiny_setup
from test_training import CrashAfterSave
from tiny import COLORS
from torch.utils.data import DataLoader, DistributedSampler

import process_image
import train
from common import store as store_module
from dataset import JsonSamples, Mixture, SampleStore, VLMDataset, encode_conversation, read_mixture, stale_reason
from dataset.mixture import draw
from model import VisionLanguageModel, VLMConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def processor(setup):
    return VisionLanguageModel.build(VLMConfig(llm=setup["llm"], vision=setup["vision"])).processor


def write_rich(folder, n=40):
    """Samples with every field the schema has: several images, several turns, caption alternatives, extra keys,
    Chinese text."""
    os.makedirs(folder, exist_ok=True)
    image_map = {}
    for name, rgb in COLORS.items():
        Image.new("RGB", (40, 40), rgb).save(folder / f"{name}.png")
        image_map[name] = {"path": str(folder / f"{name}.png")}
    names = list(COLORS)
    samples = []
    for i in range(n):
        a, b = names[i % 4], names[(i + 1) % 4]
        turns = [{"role": "user", "content": f"<|extra_0|>What colour? 第{i}题"}, {"role": "assistant", "content": a}]
        if i % 3 == 0:
            turns += [{"role": "user", "content": "<|extra_0|>And this one?"},
                      {"role": "assistant", "content": b, "alternatives": [b, f"it is {b}", f"{b}, clearly"]}]
        samples.append({"id": f"r{i}", "source": "rich" if i % 2 else "other", "images": [a, b][:1 + (i % 3 == 0)],
                        "conversations": turns, **({"note": {"k": [1, 2]}} if i % 5 == 0 else {})})
    (folder / "image_map.json").write_text(json.dumps(image_map))
    (folder / "captions.json").write_text(json.dumps(samples, ensure_ascii=False))
    return str(folder / "image_map.json"), str(folder / "captions.json")


# ---- the store ----

def test_the_store_yields_exactly_the_json_samples_in_order(tmp_path, processor, capsys):
    image_map, captions = write_rich(tmp_path / "data")
    assert stale_reason(image_map, captions) == "there is none yet"
    store = SampleStore.of(image_map, captions, progress=False)
    assert "building the sample store" in capsys.readouterr().err
    reference = JsonSamples(image_map, captions)
    assert len(store) == len(reference) == 40
    for i in range(len(reference)):
        assert store[i] == reference[i]  # every field, extra keys included
        assert store.paths(i) == reference.paths(i)
    # and the Dataset's items (tensors, images, drawn alternatives) are the same through both
    for epoch in (0, 1):
        a = VLMDataset(image_map, captions, processor, store=True, progress=False)
        b = VLMDataset(image_map, captions, processor, store=False, progress=False)
        a.set_epoch(epoch), b.set_epoch(epoch)
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert x["id"] == y["id"] and x["image_sizes"] == y["image_sizes"] and x["skipped"] == y["skipped"]
            assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
            assert torch.equal(x["pixel_values"], y["pixel_values"])
    assert stale_reason(image_map, captions) is None
    SampleStore.of(image_map, captions, progress=False)
    assert "building" not in capsys.readouterr().err  # fresh: opened as it is


def test_a_stale_or_foreign_store_is_rebuilt_with_one_line(tmp_path, capsys):
    image_map, captions = write_rich(tmp_path / "data", n=10)
    SampleStore.of(image_map, captions, progress=False)
    samples = json.loads(open(captions).read())[:7]
    time.sleep(0.01)
    with open(captions, "w") as f:
        json.dump(samples, f)
    assert stale_reason(image_map, captions) == "captions.json changed after it was built"
    capsys.readouterr()
    store = SampleStore.of(image_map, captions, progress=False)
    assert "(captions.json changed after it was built)" in capsys.readouterr().err
    assert len(store) == 7 and store[6] == samples[6]
    meta = tmp_path / "data" / "captions.store" / "store.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "schema": 0}))
    SampleStore.of(image_map, captions, progress=False)
    assert f"it has schema version 0, this code reads {store_module.SCHEMA}" in capsys.readouterr().err
    assert stale_reason(image_map, captions) is None


def test_a_killed_build_leaves_no_store(tmp_path):
    image_map, captions = write_rich(tmp_path / "data", n=10)
    marker = tmp_path / "writing"
    script = f"""
import datasets, time
from common.store import build_store
original = datasets.Dataset.save_to_disk
def slow(self, path, **kw):
    original(self, path, **kw)
    open({str(marker)!r}, "w").close()
    time.sleep(120)
datasets.Dataset.save_to_disk = slow
build_store({image_map!r}, {captions!r}, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env=env())
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists()  # the table is written, in the temporary folder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "data" / "captions.store").exists()
    assert stale_reason(image_map, captions) == "there is none yet"
    assert len(SampleStore.of(image_map, captions, progress=False)) == 10  # the next run builds it


def test_processes_that_start_together_build_the_store_once(tmp_path):
    """Ranks of a node: the first to take the lock builds; the others wait on it and open what it built."""
    image_map, captions = write_rich(tmp_path / "data", n=30)
    script = ("import sys; from common.store import SampleStore; "
              f"print(len(SampleStore.of({image_map!r}, {captions!r}, progress=False)))")
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert [out.strip() for out, _ in outs] == ["30"] * 3
    assert sum("building the sample store" in err for _, err in outs) == 1


def test_process_image_writes_the_store(tmp_path, capsys):
    image_map, captions = write_rich(tmp_path / "raw", n=6)
    rows = [{"id": s["id"], "images": [os.path.basename(json.loads(open(image_map).read())[k]["path"])
                                       for k in s["images"]], "conversations": s["conversations"]}
            for s in json.loads(open(captions).read())]
    (tmp_path / "conv.json").write_text(json.dumps(rows))
    (tmp_path / "config.yaml").write_text(f"output_dir: {tmp_path / 'out'}\nsources:\n  - type: conversations\n"
                                          f"    annotations: {tmp_path / 'conv.json'}\n"
                                          f"    image_dir: {tmp_path / 'raw'}\n")
    assert not process_image.main(["--config", str(tmp_path / "config.yaml"), "--no_progress"])
    assert "captions.store/" in capsys.readouterr().out
    out = tmp_path / "out"
    assert stale_reason(str(out / "image_map.json"), str(out / "captions.json")) is None
    written = json.loads((out / "captions.json").read_text())
    assert [SampleStore(str(out / "captions.store"))[i] for i in range(6)] == written


# ---- exact lengths ----

def test_exact_lengths_equal_the_tokenised_lengths_and_are_cached(tmp_path, processor, monkeypatch):
    image_map, captions = write_rich(tmp_path / "data")
    data = VLMDataset(image_map, captions, processor, max_length=4096, progress=False)
    lengths = data.lengths
    for i in range(len(data)):  # with caption alternatives, the longest: the most the sample can take
        turns = data.samples[i]["conversations"]
        variants = [[{"role": t["role"], "content": c if t.get("alternatives") else t["content"]} for t in turns]
                    for c in (turns[-1].get("alternatives") or [None])]
        tokenised = [len(encode_conversation(processor, v)[0]) for v in variants]
        assert lengths[i] == max(tokenised) == data.token_length(i)
        assert len(data[i]["input_ids"]) in tokenised
    cached = list((tmp_path / "data" / "captions.store").glob("lengths-*.npy"))
    assert [p.name for p in cached] == [f"lengths-{processor.fingerprint()}.npy"]
    # a second Dataset reads them; computing them again would fail here
    monkeypatch.setattr(store_module, "compute_lengths", lambda *a, **k: pytest.fail("recomputed"))
    assert list(VLMDataset(image_map, captions, processor, progress=False).lengths) == list(lengths)
    monkeypatch.undo()
    # computed in several processes, they are the same
    monkeypatch.setattr(store_module, "PARALLEL_LENGTHS", 1)
    parallel = store_module.compute_lengths(len(data), data.token_length, progress=False)
    assert list(parallel) == list(lengths)


# ---- mixtures ----

def mixture_file(tmp_path, body: str):
    path = tmp_path / "mix.yaml"
    path.write_text(body)
    return str(path)


def test_mixture_draws_are_deterministic_and_summarised(tmp_path):
    a = write_rich(tmp_path / "a", n=40)
    write_rich(tmp_path / "b", n=20)
    path = mixture_file(tmp_path, f"""sources:
  - image_map: {a[0]}
    captions: {a[1]}
    sampling: random:25%
    name: a
  - path: {tmp_path / 'b'}
    sampling: first:5
    weight: 2
    name: b
""")
    one, again, other = Mixture.read(path, seed=0), Mixture.read(path, seed=0), Mixture.read(path, seed=1)
    assert len(one) == 10 + 10
    ids = [one[i]["id"] for i in range(len(one))]
    assert ids == [again[i]["id"] for i in range(len(again))]
    assert ids != [other[i]["id"] for i in range(len(other))]
    assert ids[10:] == [f"r{i}" for i in range(5)] * 2
    assert len(set(ids[:10])) == 10 and all(one[i]["source"] in ("rich", "other") for i in range(10))
    summary = one.summary().splitlines()
    assert summary[1].split() == ["a", "random:25%", "40", "10", "50.0%"]
    assert summary[2].split() == ["b", "first:5", "x2", "20", "10", "50.0%"]
    assert summary[3].split() == ["total", "60", "20", "100.0%"]
    # the rules one by one
    rng = __import__("random").Random(0)
    assert draw(10, "end:3", 1, rng) == [7, 8, 9]
    assert len(draw(10, "random:4", 1, rng)) == 4 and len(draw(10, "random:4", 0.5, rng)) == 2
    assert draw(10, "first:20", 1.5, rng)[:10] == list(range(10)) and len(draw(10, "first:20", 1.5, rng)) == 15


@pytest.mark.parametrize("body, message", [
    ("sources:\n  - path: nowhere\n", "line 2: nowhere/image_map.json not found"),
    ("sources:\n  - path: {a}\n  - path: {a}\n    sampling: half\n", "line 3: a second source named"),
    ("sources:\n  - path: {a}\n    sampling: half\n", "line 2: sampling 'half' is not one of"),
    ("sources:\n  - path: {a}\n    weight: -1\n", "line 2: weight must be a number above 0"),
    ("sources:\n  - path: {a}\n    wieght: 2\n", "line 2: unknown key 'wieght'"),
    ("sources: []\n", "expected a list of sources"),
    ("sources:\n  - [1, 2\n", "not valid YAML"),
])
def test_a_bad_mixture_entry_is_one_sentence_naming_file_and_line(tmp_path, body, message):
    write_rich(tmp_path / "a", n=4)
    path = mixture_file(tmp_path, body.format(a=tmp_path / "a"))
    with pytest.raises(ValueError) as e:
        read_mixture(path)
    assert str(e.value).startswith(path) and message in str(e.value) and "\n" not in str(e.value)


def test_a_mixture_run_resumes_exactly_and_prints_its_table(setup, tmp_path, capsys):
    b = write_rich(tmp_path / "b", n=12)
    path = mixture_file(tmp_path, f"sources:\n  - path: {os.path.dirname(setup['captions'])}\n    sampling: random:16\n"
                                  f"  - image_map: {b[0]}\n    captions: {b[1]}\n    sampling: end:8\n    name: rich\n")
    flags = ("--data_mixture", path, "--save_steps", "3", "--llm_mode", "full")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main(argv(setup, straight, *flags, steps=6)) == 0
    err = capsys.readouterr().err
    assert "rich" in err and "total" in err and " 24 " in err
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(setup, resumed, *flags, steps=6), callbacks=[CrashAfterSave(3)])
    assert train.main(argv(setup, resumed, *flags, steps=6)) == 0
    assert losses(straight) == losses(resumed) and losses(straight)[-1] < losses(straight)[0]


# ---- webdataset shards ----

def write_shards(folder, n_shards=8, per_shard=4, truncate=None):
    """img2dataset's layout: per key a jpg and its json (caption) and txt; sample `truncate` has a cut JPEG."""
    os.makedirs(folder, exist_ok=True)
    names, k = list(COLORS), 0
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for _ in range(per_shard):
                colour = names[k % 4]
                buf = io.BytesIO()
                Image.new("RGB", (40, 40), COLORS[colour]).save(buf, format="JPEG")
                data = buf.getvalue()
                if k == truncate:
                    data = data[: len(data) // 2]
                sink.write({"__key__": f"{s:05d}{k:04d}", "jpg": data, "txt": colour,
                            "json": json.dumps({"caption": colour, "key": k}).encode()})
                k += 1
    return str(folder / f"{{00000..{n_shards - 1:05d}}}.tar")


def process_shards(tmp_path, pattern) -> tuple[str, str]:
    (tmp_path / "wds.yaml").write_text(f"output_dir: {tmp_path / 'processed'}\nsources:\n  - type: webdataset\n"
                                       f"    annotations: {pattern}\n    name: shards\n")
    assert not process_image.main(["--config", str(tmp_path / "wds.yaml"), "--no_progress"])
    return str(tmp_path / "processed" / "image_map.json"), str(tmp_path / "processed" / "captions.json")


def test_webdataset_shards_are_read_in_place_once_per_epoch_across_ranks_and_workers(tmp_path, processor):
    image_map, captions = process_shards(tmp_path, write_shards(tmp_path / "shards"))
    entries = json.loads(open(image_map).read())
    assert len(entries) == 32 and all(e["path"].endswith(".tar") and e["size"] > 0 for e in entries.values())
    samples = json.loads(open(captions).read())
    assert samples[0]["conversations"][1]["content"] == "red" and samples[0]["id"] == "shards/00000/000000000#0"
    data = VLMDataset(image_map, captions, processor, progress=False)
    # each image is the shard member's bytes: the same pixels as the JPEG decoded from the tar by webdataset
    decoded = {s["__key__"]: s["jpg"] for s in wds.WebDataset(str(tmp_path / "shards" / "{00000..00007}.tar"),
                                                             shardshuffle=False).decode("pil")}
    first = processor.images.tower_processor([decoded["000000000"].convert("RGB")])
    assert torch.equal(data[0]["pixel_values"], first)
    seen = []
    for rank in range(2):  # 2 ranks x 2 workers, one epoch
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(data, batch_size=3, sampler=sampler, num_workers=2, collate_fn=lambda b: b)
        seen += [item["id"] for batch in loader for item in batch]
    assert sorted(seen) == sorted(s["id"] for s in samples)  # every sample once


def test_webdataset_training_resumes_exactly_and_skips_a_truncated_member(setup, tmp_path, capsys):
    pattern = write_shards(tmp_path / "shards", truncate=5)
    image_map, captions = process_shards(tmp_path, pattern)
    report = json.loads((tmp_path / "processed" / "process_report.json").read_text())["shards"]
    assert report["images_corrupt"] == 1 and report["examples"]["dropped"] == ["shards/00001/000010005#0"]
    # after processing, a member's bytes go bad in place (a half-synced copy of shard 2): a bad sample in training
    entry = json.loads(open(image_map).read())["00002/000020009"]
    with open(entry["path"], "r+b") as f:
        f.seek(entry["offset"] + entry["size"] // 2)
        f.write(b"\0" * (entry["size"] - entry["size"] // 2))
    shards = {**setup, "image_map": image_map, "captions": captions}
    flags = ("--save_steps", "3", "--max_bad_samples", "2", "--dataloader_num_workers", "2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main(argv(shards, straight, *flags, steps=10)) == 0  # 31 samples: more than an epoch
    err = capsys.readouterr().err
    assert "run summary: 1 bad sample(s) skipped" in err
    record = json.loads((straight / "trainer_state.json").read_text())["stateful_callbacks"]["RunHealth"]
    cut = "shards/00002/000020009#0"
    assert list(record["attributes"]["bad_samples"]) == [cut]
    assert "cannot decode image tar-member:" in record["attributes"]["bad_samples"][cut]
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(shards, resumed, *flags, steps=10), callbacks=[CrashAfterSave(3)])
    assert train.main(argv(shards, resumed, *flags, steps=10)) == 0
    assert losses(straight) == losses(resumed) and losses(straight)[-1] < losses(straight)[0]
