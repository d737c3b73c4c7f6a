"""Frames of LeRobot v3 video features, decoded with PyAV (the `[lerobot]` extra).

A camera's episodes are concatenated in `videos/<key>/chunk-XXX/file-XXX.mp4`; frame t of an
episode is the one shown at the episode's `from_timestamp` + the frame's `timestamp`, as in
lerobot's own reader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

TOLERANCE_S = 1e-4  # lerobot's default LeRobotDataset tolerance_s
INSTALL = ('pip install "wallwm_jax[lerobot]" (PyAV wheels bundle FFmpeg with AV1 (dav1d), '
           "H.264 and HEVC decoders; a PyAV built against a system FFmpeg needs that FFmpeg "
           "to have the decoder)")


def _import_av():
    try:
        import av
    except ImportError:
        raise ImportError(f"reading LeRobot video features needs PyAV: {INSTALL}") from None
    return av


def decode_frames(path: str, timestamps: Sequence[float], codec: str = "?") -> np.ndarray:
    """The frames of video `path` at `timestamps` (seconds) as [T, H, W, 3] uint8 RGB.

    `codec` (info.json's `video.codec`) names the codec when FFmpeg cannot tell. A missing
    file is FileNotFoundError, a file PyAV cannot decode RuntimeError (file, codec, what to
    install), a timestamp with no frame within TOLERANCE_S ValueError; all name the file.
    """
    av = _import_av()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing video file")
    query = np.asarray(timestamps, np.float64)
    if not len(query):
        return np.zeros((0, 0, 0, 3), np.uint8)
    lo, hi = query.min() - TOLERANCE_S, query.max() + TOLERANCE_S
    times, frames = [], []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise RuntimeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # FFmpeg has no decoder for this codec
                raise RuntimeError(f"{path}: codec {codec} cannot be decoded by this PyAV "
                                   f"(av {av.__version__}); {INSTALL}")
            codec = stream.codec_context.name
            if lo > 0:  # to the keyframe at or before the episode's first frame
                container.seek(int(lo / stream.time_base), stream=stream)
            for frame in container.decode(stream):
                if frame.time is None or frame.time < lo:
                    continue
                if frame.time > hi:
                    break
                times.append(frame.time)
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as err:
        raise RuntimeError(f"{path}: cannot decode (codec {codec}): {err}; {INSTALL}"
                           ) from None
    if not times:
        raise ValueError(f"{path}: no frames between {lo:.4f}s and {hi:.4f}s")
    times = np.asarray(times)
    nearest = np.abs(query[:, None] - times[None, :]).argmin(axis=1)
    off = np.abs(times[nearest] - query)
    if (off >= TOLERANCE_S).any():
        i = int(off.argmax())
        raise ValueError(f"{path}: no frame within {TOLERANCE_S}s of {query[i]:.4f}s "
                         f"(nearest at {times[nearest[i]]:.4f}s)")
    return np.stack([frames[i] for i in nearest])
