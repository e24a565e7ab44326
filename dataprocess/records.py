"""What every converter returns, before images are resolved and checked."""

from dataclasses import dataclass


class DataError(ValueError):
    """A malformed annotation file or config; the message names the file and the entry."""


@dataclass
class RawSample:
    id: str  # unique within its source
    images: list[str]  # paths relative to the source's image_dir, in order of the markers
    conversations: list[dict]  # {"role": user|assistant|system, "content": str with image markers}
