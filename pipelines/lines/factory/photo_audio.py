"""The "photo" renderer's machine sounds: 1 s clips of one of several machine types in a noisy hall.

Design note. Each clip picks a machine (blower, hydraulic power pack, belt drive, mixer gearbox, vacuum pump)
with its own tonal signature built on a random shaft speed: blade-pass, piston-ripple, belt-pass,
gear-mesh or vane-pass tones with harmonics, sidebands and a machine-specific noise floor. The hall adds
babble-like modulated noise, hiss, neighbouring machines and the odd distant clank at a random SNR, and a
random microphone colouring is applied last. ``bearing_click`` adds trains of short resonant impacts at a
fault rate that is a non-integer multiple of the shaft speed, with slip jitter; ``imbalance_hum`` adds a
once-per-revolution tone with amplitude modulation of the machine at shaft rate. Both range from subtle to
clear. Written without reading the project's other renderers' code.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

from pipelines.lines.factory.synth import CLIP_SAMPLES, MACHINE_STATES, SAMPLE_RATE

_MACHINES = ("blower", "hydraulic", "belt", "mixer", "vacuum")
_T = np.arange(CLIP_SAMPLES) / SAMPLE_RATE


def _band(g: np.random.Generator, lo: float, hi: float, order: int = 2) -> np.ndarray:
    """Unit-RMS noise band-limited to [lo, hi] Hz."""
    x = sosfilt(butter(order, [lo, min(hi, 7800)], "bandpass", fs=SAMPLE_RATE, output="sos"),
                g.normal(size=CLIP_SAMPLES))
    return x / (x.std() + 1e-12)


def _tones(g: np.random.Generator, base: float, count: int, tilt: float, wobble: float = 0.002) -> np.ndarray:
    """Harmonics 1..count of ``base`` Hz with a random spectral tilt and slowly wobbling pitch."""
    drift = 1 + wobble * np.sin(2 * np.pi * g.uniform(0.1, 1.5) * _T + g.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(base * drift) / SAMPLE_RATE
    out = np.zeros(CLIP_SAMPLES)
    for k in range(1, count + 1):
        if k * base < 7500:
            out += g.uniform(0.3, 1) * k ** -tilt * np.sin(k * phase + g.uniform(0, 2 * np.pi))
    return out / (out.std() + 1e-12)


def _machine(g: np.random.Generator, kind: str, rot: float) -> np.ndarray:
    """The machine's healthy sound, RMS about 1."""
    if kind == "blower":
        blades = g.integers(5, 13)
        x = _tones(g, blades * rot, 4, 1.2) + g.uniform(0.5, 1.5) * _band(g, 200, 4000)
    elif kind == "hydraulic":
        pistons = g.integers(7, 12)
        x = _tones(g, pistons * rot, 12, 0.6) + 0.4 * _tones(g, g.uniform(800, 2500), 3, 1) + 0.3 * _band(g, 1e3, 6e3)
    elif kind == "belt":
        belt = rot * g.uniform(0.25, 0.45)  # belt pass, below the shaft rate
        slap = 1 + 0.6 * np.maximum(np.sin(2 * np.pi * belt * _T), 0) ** 8
        x = slap * _band(g, 300, 3000) + 0.5 * _tones(g, rot * g.uniform(2.5, 4), 5, 1.0)
    elif kind == "mixer":
        mesh = rot * g.integers(15, 40)
        carrier = _tones(g, mesh, 3, 1.0)
        x = carrier * (1 + 0.2 * np.sin(2 * np.pi * rot * g.uniform(0.2, 0.5) * _T)) + 0.6 * _band(g, 100, 2000)
    else:  # vacuum pump: vane pass pulses in a broad hiss
        vanes = g.integers(3, 7)
        pulse = 1 + g.uniform(0.3, 0.8) * np.sin(2 * np.pi * vanes * rot * _T) ** 2
        x = pulse * _band(g, 400, 6000) + 0.4 * _tones(g, vanes * rot, 6, 0.9)
    return x / (x.std() + 1e-12)


def _hall(g: np.random.Generator) -> np.ndarray:
    """Background: babble-like modulated noise, hiss, a neighbouring machine, sometimes a distant clank."""
    syllables = np.abs(_band(g, 2, 7, 1)) ** 1.5
    x = g.uniform(0, 1) * syllables * _band(g, 250, 2500) + g.uniform(0.2, 1) * _band(g, 20, 7800, 1)
    x += g.uniform(0, 0.8) * _tones(g, g.uniform(80, 400), int(g.integers(2, 8)), 1.0)
    if g.random() < 0.3:
        at = g.integers(CLIP_SAMPLES - 4000)
        ring = np.sin(2 * np.pi * g.uniform(300, 1500) * _T[:4000]) * np.exp(-_T[:4000] * g.uniform(20, 60))
        x[at:at + 4000] += g.uniform(0.5, 2) * ring
    return x / (x.std() + 1e-12)


def _clicks(g: np.random.Generator, rot: float) -> np.ndarray:
    """Short resonant impacts at a fault rate of 2.6-6.3 times the shaft speed, with slip jitter."""
    rate = rot * g.uniform(2.6, 6.3)
    times = np.arange(g.uniform(0, 1 / rate), 1, 1 / rate)
    times = times + g.normal(0, 0.015 / rate, len(times))
    impulses = np.zeros(CLIP_SAMPLES)
    idx = np.clip((times * SAMPLE_RATE).astype(int), 0, CLIP_SAMPLES - 1)
    np.add.at(impulses, idx, g.uniform(0.4, 1, len(idx)))
    decay = g.uniform(0.9, 0.985)
    x = np.zeros(CLIP_SAMPLES)
    for _ in range(g.integers(1, 3)):  # one or two structural resonances
        f = g.uniform(1500, 6500)
        a = [1, -2 * decay * np.cos(2 * np.pi * f / SAMPLE_RATE), decay**2]
        x += lfilter([1], a, impulses)
    return x / (np.sqrt((x**2).mean()) + 1e-12)


def render_machine_sound_photo(rng: np.random.Generator, machine: str) -> np.ndarray:
    """A 1 s, 16 kHz mono clip ``(1, 16000)`` float32 in [-1, 1] of a machine in state ``machine``."""
    if machine not in MACHINE_STATES:
        raise ValueError(f"unknown machine state {machine!r}")
    g = np.random.default_rng(rng.integers(0, 2**31, size=4))
    kind = _MACHINES[g.integers(len(_MACHINES))]
    rot = g.uniform(12, 50)  # shaft speed, Hz
    x = _machine(g, kind, rot) + 10 ** (-g.uniform(0, 20) / 20) * _hall(g)
    if machine == "bearing_click":
        x += 10 ** (g.uniform(-14, 4) / 20) * _clicks(g, rot)
    elif machine == "imbalance_hum":
        depth = 10 ** g.uniform(-1.3, -0.2)
        x *= 1 + depth * np.sin(2 * np.pi * rot * _T + g.uniform(0, 2 * np.pi))
        x += 10 ** (g.uniform(-12, 6) / 20) * np.sin(2 * np.pi * rot * _T + g.uniform(0, 2 * np.pi))
    # microphone: a gentle low cut and a random roll-off
    x = sosfilt(butter(1, g.uniform(8, 30), "highpass", fs=SAMPLE_RATE, output="sos"), x)
    x = sosfilt(butter(2, g.uniform(4500, 7800), "lowpass", fs=SAMPLE_RATE, output="sos"), x)
    return (x * (g.uniform(0.2, 0.9) / (np.abs(x).max() + 1e-12))).astype(np.float32)[None, :]
