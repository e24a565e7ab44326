"""Files already in the project's own sample schema, with image paths relative to image_dir:
[{"id": str, "images": [path, ...], "conversations": [{"role": ..., "content": ...}, ...]}, ...]
Useful for custom data: it is checked, merged and validated like the public sets."""

from .records import DataError, RawSample

ROLES = ("user", "assistant", "system")


def convert_conversations(entries, file: str, marker: str) -> list[RawSample]:
    if not isinstance(entries, list):
        raise DataError(f"{file}: expected a JSON list of samples")
    samples = []
    for i, entry in enumerate(entries):
        where = f"{file}: entry {i}" + (f" (id {entry.get('id')})" if isinstance(entry, dict) else "")
        if not isinstance(entry, dict) or not {"id", "images", "conversations"} <= set(entry):
            raise DataError(f"{where} lacks 'id', 'images' or 'conversations'")
        turns = entry["conversations"]
        if not all(isinstance(t, dict) and t.get("role") in ROLES and isinstance(t.get("content"), str)
                   for t in turns):
            raise DataError(f"{where} has a turn that is not {{'role': user|assistant|system, 'content': str}}")
        n_markers = sum(t["content"].count(marker) for t in turns)
        if n_markers != len(entry["images"]):
            raise DataError(f"{where} has {n_markers} image markers for {len(entry['images'])} images")
        samples.append(RawSample(str(entry["id"]), list(entry["images"]), [dict(t) for t in turns]))
    return samples
