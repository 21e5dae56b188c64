"""Arrays in, model-ready tensors out: the one preprocessing used by training, evaluation and serving.

Images: ``(H, W, 3)`` uint8 BGR (OpenCV order) -> resized with ``cv2.INTER_AREA`` -> RGB ``(3, h, w)``
-> scaled to [0, 1] and normalised with the ImageNet mean/std.

Audio: ``(C, T)`` float32 waveform -> mono mix -> resampled to the config rate -> padded (end) or centre-cropped
to ``clip_seconds`` -> log-mel ``(1, n_mels, frames)`` in dB.

Example:
    >>> cfg = InspectorConfig()
    >>> image_tensor(np.zeros((480, 640, 3), np.uint8), cfg.image_size).shape
    torch.Size([3, 192, 256])
    >>> log_mel(np.zeros((1, 16000), np.float32), 16000, cfg).shape
    torch.Size([1, 64, 101])
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from model.config import InspectorConfig
from model.encoders import inside_count

IMAGE_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGE_STD = (0.229, 0.224, 0.225)
_MEAN, _STD = np.asarray(IMAGE_MEAN, np.float32), np.asarray(IMAGE_STD, np.float32)


def image_uint8(pixels_bgr: np.ndarray, size: tuple[int, int] = (192, 256)) -> Tensor:
    """``(H, W, 3)`` uint8 BGR -> ``(3, size[0], size[1])`` uint8 RGB, resized with ``cv2.INTER_AREA``.

    The compact form stored by dataset caches; :func:`normalize_images` turns it into model input.
    """
    return torch.from_numpy(np.ascontiguousarray(_resized_rgb(pixels_bgr, size).transpose(2, 0, 1)))


def _resized_rgb(pixels_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` uint8 BGR -> an ``(h, w, 3)`` RGB view, resized with ``cv2.INTER_AREA``; checks the input."""
    return _resized_bgr(pixels_bgr, size)[:, :, ::-1]


def _resized_bgr(pixels_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` uint8 BGR -> ``(h, w, 3)`` uint8 BGR, resized with ``cv2.INTER_AREA``; checks the input."""
    if pixels_bgr.ndim != 3 or pixels_bgr.shape[2] != 3 or pixels_bgr.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 BGR, got {pixels_bgr.shape} {pixels_bgr.dtype}")
    h, w = size
    if pixels_bgr.shape[:2] != (h, w):
        pixels_bgr = cv2.resize(pixels_bgr, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(pixels_bgr)


def normalize_images(images: Tensor) -> Tensor:
    """uint8 ``(..., 3, H, W)`` in 0..255, or float in [0, 1] -> float normalised with the ImageNet mean/std."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(IMAGE_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def image_tensor(pixels_bgr: np.ndarray, size: tuple[int, int] = (192, 256)) -> Tensor:
    """``(H, W, 3)`` uint8 BGR -> ``(3, size[0], size[1])`` float32, normalised: the image encoder's input."""
    return normalize_images(image_uint8(pixels_bgr, size))


def image_batch(frames: list[np.ndarray | None], size: tuple[int, int], highpass: int = 0) -> Tensor:
    """Frames -> the image encoder's input ``(n, 3 + 3 * bool(highpass), h, w)`` float32, channels-last memory.

    The serving fast path: each ``(H, W, 3)`` uint8 BGR frame is resized and normalised as in
    :func:`image_tensor`; with ``highpass`` the three local-contrast channels (the image minus its
    ``highpass`` x ``highpass`` local mean, :func:`model.encoders.local_mean`) are appended, which the encoder
    then does not recompute. ``None`` frames (missing images) stay zeros.

    Every step is one OpenCV pass over the resized frame: the local mean is an unnormalised box filter of the
    uint8 pixels (exact integer sums in float32) times the per-pixel reciprocal of the in-image window count,
    and the BGR -> RGB swap, ``/ 255`` and ImageNet normalisation are one ``cv2.transform`` (an affine map per
    pixel; the local contrast takes its linear part, the mean offset cancels). Same values as the in-graph path
    within 1e-6, about 2x cheaper than NumPy arithmetic on this CPU (``docs/performance.md``).
    """
    h, w = size
    out = np.empty((len(frames), h, w, 6 if highpass else 3), np.float32)
    normalise = _bgr_to_normalised_rgb()
    for i, frame in enumerate(frames):
        if frame is None:
            out[i] = 0.0
            continue
        pixels = _resized_bgr(np.asarray(frame), size)
        values = pixels.astype(np.float32)
        if not highpass:
            cv2.transform(values, normalise, dst=out[i])
            continue
        sums = cv2.boxFilter(pixels, cv2.CV_32F, (highpass, highpass), normalize=False,
                             borderType=cv2.BORDER_CONSTANT)
        contrast = cv2.subtract(values, cv2.multiply(sums, _inverse_inside_count(h, w, highpass)))
        cv2.merge([cv2.transform(values, normalise), cv2.transform(contrast, normalise[:, :3])], dst=out[i])
    return torch.from_numpy(out).permute(0, 3, 1, 2)  # a channels-last view, no copy


@lru_cache(maxsize=1)
def _bgr_to_normalised_rgb() -> np.ndarray:
    """``(3, 4)`` affine map: BGR pixel values 0..255 -> RGB ``(v / 255 - mean) / std`` (ImageNet)."""
    affine = np.zeros((3, 4), np.float32)
    for rgb in range(3):
        affine[rgb, 2 - rgb] = 1.0 / (255.0 * _STD[rgb])
        affine[rgb, 3] = -_MEAN[rgb] / _STD[rgb]
    return affine


@lru_cache(maxsize=8)
def _inverse_inside_count(h: int, w: int, kernel: int) -> np.ndarray:
    """``(h, w, 3)``: one over the count of ``kernel`` x ``kernel`` window pixels inside the image (turns a
    zero-padded box sum into the mean over the pixels inside, as ``avg_pool2d(count_include_pad=False)``)."""
    pad = kernel // 2
    inside = inside_count(h, pad)[:, None] * inside_count(w, pad)[None, :]
    return np.repeat((1.0 / inside).numpy()[:, :, None], 3, axis=2).astype(np.float32)


def waveform_tensor(waveform: np.ndarray | Tensor, sample_rate: int, config: InspectorConfig) -> Tensor:
    """``(C, T)`` (or ``(T,)``) float waveform -> ``(1, clip_samples)`` float32 mono at ``config.sample_rate``.

    Channels are averaged; the clip is resampled when its rate differs, then centre-cropped or zero-padded at
    the end to ``config.clip_seconds``. Raises ValueError on an empty clip or a non-positive rate.
    """
    wav = torch.as_tensor(np.asarray(waveform, dtype=np.float32) if not isinstance(waveform, Tensor) else waveform)
    wav = wav.float()
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[-1] == 0:
        raise ValueError(f"waveform must be (channels, samples) with samples > 0, got {tuple(wav.shape)}")
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    wav = wav.mean(dim=0, keepdim=True)
    if sample_rate != config.sample_rate:
        wav = torchaudio.functional.resample(wav, int(sample_rate), config.sample_rate)
    n = config.clip_samples
    t = wav.shape[-1]
    if t > n:
        start = (t - n) // 2
        wav = wav[:, start : start + n]
    elif t < n:
        wav = torch.nn.functional.pad(wav, (0, n - t))
    return wav.contiguous()


class LogMel(nn.Module):
    """Waveforms ``(B, 1, T)`` -> log-mel power in dB ``(B, 1, n_mels, frames)``.

    ``torchaudio.transforms.MelSpectrogram`` (Hann window, centred frames, power 2) followed by
    ``10 * log10(max(mel, 1e-10))``. No learnable parameters; normalisation happens in the audio encoder.
    """

    def __init__(self, config: InspectorConfig):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            n_mels=config.n_mels,
            f_min=config.f_min,
            f_max=config.f_max,
            power=2.0,
        )

    def forward(self, waveforms: Tensor) -> Tensor:
        return 10.0 * torch.log10(self.mel(waveforms).clamp_min(1e-10))


@lru_cache(maxsize=8)
def _log_mel_module(config_json: str) -> LogMel:
    return LogMel(InspectorConfig.from_json(config_json)).eval()


def log_mel_batch(waveforms: Tensor, config: InspectorConfig) -> Tensor:
    """``(B, 1, T)`` waveforms at ``config.sample_rate`` -> ``(B, 1, n_mels, frames)`` log-mel (dB)."""
    module = _log_mel_module(config.to_json()).to(waveforms.device)
    with torch.no_grad():
        return module(waveforms)


def log_mel(waveform: np.ndarray | Tensor, sample_rate: int, config: InspectorConfig | None = None) -> Tensor:
    """``(C, T)`` float32 waveform at ``sample_rate`` -> ``(1, n_mels, frames)`` log-mel (dB), fixed length."""
    config = config or InspectorConfig()
    return log_mel_batch(waveform_tensor(waveform, sample_rate, config)[None], config)[0]
