"""Videos as frames: a video file (mp4, webm, mkv, avi, mov, gif) decoded with PyAV (FFmpeg inside its wheels), or
torchcodec where installed, or a folder of frame images; frames sampled by transformers' rule (uniform, or at a
frame rate), each frame's time kept.

    sample_indices(total, frames)  ->  arange(frames) * total // frames      (transformers' default_sample_indices_fn)
    sample_indices(total, fps=f, video_fps=v)  ->  the same with max(1, int(total / v * f)) frames

A frame folder has no frame rate of its own: FOLDER_FPS (LLaVA-Video-178K's frames are extracted at 1 fps).
"""

import os
from dataclasses import dataclass

import numpy as np

from .images import ImageLoadError, image_size, load_image

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FOLDER_FPS = 1.0
BACKENDS = ("pyav", "torchcodec")


class VideoLoadError(ImageLoadError):
    """A video is missing or cannot be decoded (a bad sample, counted as a bad image is)."""


def is_video(path: str) -> bool:
    """Whether an image_map.json reference names a video: a video file's extension, or a folder of frames."""
    return path.lower().endswith(VIDEO_EXTENSIONS) or os.path.isdir(path)


@dataclass
class VideoInfo:
    frames: int  # decodable frames in all
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps


@dataclass
class Video:
    """Sampled frames (F, H, W, 3) uint8 RGB, which of the video's frames they are, and their times in seconds."""

    frames: np.ndarray
    indices: list[int]
    timestamps: list[float]
    info: VideoInfo

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    def reversed(self) -> "Video":
        return Video(self.frames[::-1].copy(), self.indices[::-1], self.timestamps[::-1], self.info)


def sample_indices(total: int, frames: int | None = None, fps: float | None = None,
                   video_fps: float | None = None) -> list[int]:
    """Which of `total` frames to keep: `frames` spread uniformly, or `fps` a second of a video at `video_fps`; never
    more than there are (a short clip gives all of its frames)."""
    if (frames is None) == (fps is None):
        raise ValueError("give the frames to sample or a frame rate, one of the two")
    if fps is not None:
        frames = max(1, int(total / video_fps * fps))
    frames = min(frames, total)
    return (np.arange(frames, dtype=int) * total // frames).tolist()


def folder_frames(path: str) -> tuple[list[str], VideoInfo]:
    """A frame folder's images, in name order, and its VideoInfo (size from the first frame's header)."""
    files = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.lower().endswith(FRAME_EXTENSIONS)]
    if not files:
        raise VideoLoadError(f"frame folder {path} holds no images")
    height, width = image_size(files[0])
    return files, VideoInfo(len(files), FOLDER_FPS, height, width)


def _pyav_info(container) -> VideoInfo:
    stream = container.streams.video[0]
    frames = stream.frames
    if not frames:  # webm, mkv and some gifs record no count: count the packets (no decoding)
        frames = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0)
    fps = float(stream.average_rate or stream.guessed_rate or 0) or FOLDER_FPS
    return VideoInfo(int(frames), fps, stream.height, stream.width)


def video_info(path: str) -> VideoInfo:
    """Frame count, frame rate and size, from the container (or the folder), without decoding frames."""
    try:
        if os.path.isdir(path):
            return folder_frames(path)[1]
        import av

        with av.open(path) as container:
            if not container.streams.video:
                raise VideoLoadError(f"{path} holds no video stream")
            info = _pyav_info(container)
    except FileNotFoundError:
        raise VideoLoadError(f"video file not found: {path}") from None
    except VideoLoadError:
        raise
    except Exception as e:  # noqa: BLE001  (PyAV raises its own error classes for every kind of bad file)
        raise VideoLoadError(f"cannot decode video {path}: {e}") from None
    if info.frames == 0:
        raise VideoLoadError(f"video {path} holds no frames")
    return info


def _decode_pyav(path: str, frames: int | None, fps: float | None) -> Video:
    import av

    with av.open(path) as container:
        info = _pyav_info(container)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        wanted = sample_indices(info.frames, frames, fps, info.fps)
        keep, out, times = set(wanted), [], []
        for i, frame in enumerate(container.decode(stream)):
            if i in keep:
                out.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else i / info.fps)
            if i >= wanted[-1]:
                break
    if len(out) != len(wanted):
        raise VideoLoadError(f"video {path} ends after {len(out)} of the {len(wanted)} frames sampled")
    return Video(np.stack(out), wanted, times, info)


def _decode_torchcodec(path: str, frames: int | None, fps: float | None) -> Video:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(path, dimension_order="NHWC")
    meta = decoder.metadata
    info = VideoInfo(int(meta.num_frames), float(meta.average_fps or FOLDER_FPS), meta.height, meta.width)
    wanted = sample_indices(info.frames, frames, fps, info.fps)
    batch = decoder.get_frames_at(indices=wanted)
    return Video(batch.data.numpy(), wanted, batch.pts_seconds.tolist(), info)


def load_video(path: str, frames: int | None = 8, fps: float | None = None, backend: str = "pyav") -> Video:
    """The video's sampled frames (`frames` uniformly, or `fps` a second); VideoLoadError when it cannot be used."""
    if backend not in BACKENDS:
        raise ValueError(f"video backend must be one of {BACKENDS}, not {backend!r}")
    if (frames is None) == (fps is None) or (frames or 1) < 1 or (fps or 1) <= 0:
        raise ValueError(f"sample a positive number of frames or a positive frame rate, one of the two (frames="
                         f"{frames}, fps={fps})")
    try:
        if os.path.isdir(path):
            files, info = folder_frames(path)
            wanted = sample_indices(info.frames, frames, fps, info.fps)
            images = [np.asarray(load_image(files[i])) for i in wanted]
            if len({image.shape for image in images}) > 1:
                raise VideoLoadError(f"the frames in {path} differ in size")
            return Video(np.stack(images), wanted, [i / info.fps for i in wanted], info)
        if not os.path.exists(path):
            raise VideoLoadError(f"video file not found: {path}")
        return (_decode_torchcodec if backend == "torchcodec" else _decode_pyav)(path, frames, fps)
    except ImageLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VideoLoadError(f"cannot decode video {path}: {e}") from None
