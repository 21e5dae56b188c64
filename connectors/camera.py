"""Frames from a camera, a video file or a stream (anything OpenCV's ``VideoCapture`` opens).

Example:
    >>> for item in CameraSource("line3.mp4", prefix="part", limit=100):
    ...     print(item.item_id, item.frame.pixels.shape)      # part-000000 (480, 640, 3)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2

from connectors.records import Frame, Quarantined, Sample

log = logging.getLogger("fusionline.camera")

# OpenCV passes this variable's options to FFmpeg when it opens a capture. For files we add ``discardcorrupt``:
# the demuxer then drops a packet it read short (a frame torn by a truncation) instead of handing the decoder
# half a frame to conceal into a plausible picture, and the lost frame shows up as a shortfall.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
FILE_OPTIONS = "fflags;+discardcorrupt"
_options_lock = threading.Lock()  # the variable is process-wide: one open at a time changes it


class SourceUnavailable(OSError):
    """A source (camera, stream, file) cannot be opened at all; the message names it."""


class CameraSource:
    """Yields one :class:`Sample` per frame, with decoded pixels (``(H, W, 3)`` uint8 BGR).

    Args:
        source: a device index (``0``), a video file path, or a stream URL (``rtsp://...``).
        prefix: item ids are ``<prefix>-<seq:06d>``.
        limit: stop after this many frames (None: until the source ends).

    Timestamps are the frame's position in the file (seconds) for files, the epoch time of capture for
    devices and streams. A source that does not open raises :class:`SourceUnavailable` when iteration
    starts, except an existing file OpenCV cannot read (corrupt, truncated MP4): like a file or stream
    that stops early, that yields one :class:`Quarantined` naming the source and the frame index where
    reading failed, and the iteration ends. A file counts as stopping early when it delivers fewer
    frames than its container announces; a device or stream, whenever it stops. A frame a file holds only
    part of (torn by a truncation) is never decoded: FFmpeg drops it, so it is the frame quarantined.
    """

    def __init__(self, source: int | str | Path, prefix: str = "cam", limit: int | None = None):
        self.source = str(source) if isinstance(source, Path) else source
        self.prefix = prefix
        self.limit = limit
        self.is_file = isinstance(self.source, str) and Path(self.source).is_file()

    def __iter__(self) -> Iterator[Sample | Quarantined]:
        cap = self._open()
        try:
            if not cap.isOpened():
                if not self.is_file:
                    missing = isinstance(self.source, str) and "://" not in self.source
                    why = "no such file" if missing else "OpenCV cannot open it"
                    raise SourceUnavailable(f"video source {self.source!r} cannot be opened: {why}")
                yield self._quarantine(0, "not a readable video (corrupt or truncated)")
                return
            expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self.is_file else 0
            log.info("camera opened source=%s expected_frames=%d", self.source, expected)
            seq = 0
            while self.limit is None or seq < self.limit:
                ok, pixels = cap.read()
                if not ok:
                    if self.is_file and seq >= expected:
                        return
                    what = f"of {expected} announced " if expected else ""
                    reason = f"reading failed at frame {seq} {what}(torn, truncated, corrupt or stream lost)"
                    yield self._quarantine(seq, reason)
                    return
                ts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self.is_file else time.time()
                item_id = f"{self.prefix}-{seq:06d}"
                frame = Frame(item_id, ts, pixels=pixels, source=str(self.source))
                yield Sample(item_id=item_id, seq=seq, ts=ts, frame=frame)
                seq += 1
        finally:
            cap.release()

    def _open(self) -> cv2.VideoCapture:
        """The capture; a file's with :data:`FILE_OPTIONS` added to any options the environment sets."""
        if not self.is_file:
            return cv2.VideoCapture(self.source)
        with _options_lock:
            before = os.environ.get(FFMPEG_OPTIONS_ENV)
            os.environ[FFMPEG_OPTIONS_ENV] = f"{before}|{FILE_OPTIONS}" if before else FILE_OPTIONS
            try:
                return cv2.VideoCapture(self.source)
            finally:
                if before is None:
                    del os.environ[FFMPEG_OPTIONS_ENV]
                else:
                    os.environ[FFMPEG_OPTIONS_ENV] = before

    def _quarantine(self, seq: int, reason: str) -> Quarantined:
        log.warning("camera quarantined source=%s frame=%d reason=%s", self.source, seq, reason)
        return Quarantined(f"{self.prefix}-{seq:06d}", seq, f"{self.source}: {reason}", stage="source")
