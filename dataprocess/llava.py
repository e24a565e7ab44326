"""LLaVA instruct JSON (detail_23k, complex_reasoning_77k, conversation_58k, llava_instruct_150k,
llava_v1_5_mix665k, blip_laion_cc_sbu_558k; and LLaVA-Interleave / OneVision entries whose "image" is a list,
with one <image> per image in the text; LLaVA-Video-178K / LLaVA-OneVision entries whose "video" names a video file or
a folder of frames, its place marked by <image> or <video>) -> samples. Every turn is kept, every image in the order of
its tag."""

from common import VIDEO_MARKER

from .records import DataError, RawSample

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
LLAVA_IMAGE = "<image>"
LLAVA_VIDEO = "<video>"


def convert_llava(entries: list, file: str, marker: str) -> list[RawSample]:
    if not isinstance(entries, list):
        raise DataError(f"{file}: expected a JSON list of LLaVA samples")
    samples = []
    for i, entry in enumerate(entries):
        where = f"{file}: entry {i}" + (f" (id {entry.get('id')})" if isinstance(entry, dict) else "")
        if not isinstance(entry, dict) or "conversations" not in entry or "id" not in entry:
            raise DataError(f"{where} lacks 'id' or 'conversations'")
        turns = []
        for turn in entry["conversations"]:
            if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
                raise DataError(f"{where} has a turn that is not {{'from': human|gpt|system, 'value': str}}")
            text = turn["value"].replace(LLAVA_VIDEO, VIDEO_MARKER)
            # a video entry marks its video with <image> (LLaVA-Video-178K) or <video>
            text = text.replace(LLAVA_IMAGE, VIDEO_MARKER if entry.get("video") else marker)
            turns.append({"role": ROLES[turn["from"]], "content": text})
        if entry.get("video") and entry.get("image"):
            raise DataError(f"{where} names both an image and a video; split it into two entries")
        if entry.get("video"):
            marker = VIDEO_MARKER
        image = entry.get("video") or entry.get("image")
        images = [str(i) for i in image] if isinstance(image, list) else ([image] if image else [])
        n_markers = sum(t["content"].count(marker) for t in turns)
        first_user = next((t for t in turns if t["role"] == "user"), None)
        if first_user is None or not any(t["role"] == "assistant" for t in turns):
            raise DataError(f"{where} needs at least one human and one gpt turn")
        if len(images) == 1 and n_markers == 0:  # a few instruct sets omit <image>: it goes before the first question
            first_user["content"] = f"{marker}\n{first_user['content']}"
        elif n_markers != len(images):
            what = "video" if marker == VIDEO_MARKER else "image"
            raise DataError(f"{where} has {n_markers} <{what}> tokens for {len(images)} {what}s")
        samples.append(RawSample(str(entry["id"]), images, turns))
    return samples
