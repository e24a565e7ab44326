"""What every part of the project shares: atomic writes, the data format (its image marker, image references, the
sample store), the CLI error rule."""

from .cli import exits_on, fail
from .files import atomic_file, atomic_folder, read_json

# The marker that data files and prompts use for "an image goes here", whatever the LLM. It is Qwen-7B's
# own token; for other LLMs the processor swaps it for the model's image token (added to their vocabulary).
IMAGE_MARKER = "<|extra_0|>"
# "A video goes here" (its frames, pooled, then one newline vector): Qwen-7B's next reserved token, as LLaVA-OneVision
# gives videos their own <video> token; for other LLMs the processor swaps it for the model's video token.
VIDEO_MARKER = "<|extra_1|>"

__all__ = ["IMAGE_MARKER", "VIDEO_MARKER", "atomic_file", "atomic_folder", "exits_on", "fail", "read_json"]
