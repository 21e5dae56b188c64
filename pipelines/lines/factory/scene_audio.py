"""Machine sound for the "scene" renderer: 1 s of a machine on the line, written independently of the ``paint``
(:mod:`.synth`) and ``shaded`` (:mod:`.shaded_audio`) sounds, sharing only their constants and interface.

Each clip draws a machine type -- motor with fan, centrifugal pump, gearbox, conveyor drive, piston compressor or
spindle -- with a rotation rate of 8..60 Hz that wanders slightly, a decaying harmonic series of it, the type's own
tones (blade or vane pass, gear mesh with sidebands, roller knocks, piston strokes, a spindle whine), broadband
flow noise coloured by the machine's structural resonances (damped modes at 500..6000 Hz), a random room impulse
response, and plant background (another machine, mains hum at 50 or 60 Hz, hiss, distant impacts) at a random SNR.

Faults are added to the machine before the room, so that only their signature tells the class apart:

* ``bearing_click``: impacts at a bearing defect rate (a non-integer 2.5..7 times the rotation rate), with timing and
  amplitude jitter, sometimes amplitude-modulated at the rotation rate, each ringing the bearing's resonances;
* ``imbalance_hum``: a dominant 1x rotation tone (and some 2x) beating slowly, while the whole machine sound
  wobbles at the rotation rate.

Both come at random strength, from subtle to clear.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve, lfilter

from pipelines.lines.factory.synth import CLIP_SAMPLES, MACHINE_STATES, SAMPLE_RATE

_MACHINES = ("motor_fan", "pump", "gearbox", "conveyor", "compressor", "spindle")
_T = np.arange(CLIP_SAMPLES) / SAMPLE_RATE


def _resonate(x: np.ndarray, freq: float, q: float) -> np.ndarray:
    """``x`` through a two-pole resonator at ``freq`` Hz with quality ``q``, unit peak gain."""
    r = np.exp(-np.pi * freq / (q * SAMPLE_RATE))
    return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / SAMPLE_RATE), r * r], x)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x)) + 1e-12)


def _pink(rng: np.random.Generator, n: int, tilt: float) -> np.ndarray:
    """(n,) noise with power ~ 1/f^tilt, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0) ** (tilt / 2)
    x = np.fft.irfft(spec, n)
    return x / _rms(x)


def _rotation_phase(rng: np.random.Generator, f_rot: float) -> np.ndarray:
    """(n,) shaft angle (radians) of a rotation at ``f_rot`` Hz that wanders by a fraction of a percent."""
    wander = 1 + rng.uniform(0.001, 0.008) * np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * _T + rng.uniform(0, 6.3))
    return 2 * np.pi * np.cumsum(f_rot * wander) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)


def _harmonics(rng: np.random.Generator, phase: np.ndarray, orders: np.ndarray, decay: float) -> np.ndarray:
    """Sum of sines at ``orders`` x the rotation, amplitudes decaying as exp(-decay x order) with random scatter."""
    amps = np.exp(-decay * orders) * rng.lognormal(0, 0.5, len(orders))
    return sum(a * np.sin(k * phase + rng.uniform(0, 6.3)) for k, a in zip(orders, amps))


def _machine(rng: np.random.Generator, kind: str, f_rot: float, phase: np.ndarray) -> np.ndarray:
    """(n,) healthy machine of type ``kind``, unit RMS."""
    n = CLIP_SAMPLES
    tone = _harmonics(rng, phase, np.arange(1, int(rng.integers(4, 12)) + 1), rng.uniform(0.2, 0.7))
    tone *= rng.uniform(0.2, 0.5)  # a healthy machine's own 1x is modest
    if kind in ("motor_fan", "pump"):
        blades = int(rng.integers(5, 10) if kind == "motor_fan" else rng.integers(5, 8))
        tone += rng.uniform(0.5, 1.5) * _harmonics(rng, phase, blades * np.arange(1, 4), 0.6)
    elif kind == "gearbox":
        teeth = int(rng.integers(17, 45))
        carrier = np.sin(teeth * phase)
        tone += rng.uniform(0.5, 1.2) * carrier * (1 + rng.uniform(0.1, 0.4) * np.cos(phase))
        tone += rng.uniform(0.1, 0.4) * np.sin(2 * teeth * phase)
    elif kind == "conveyor":
        knocks = np.zeros(n)
        at = (np.arange(0, 1, 1 / (f_rot * rng.uniform(1.5, 4))) * SAMPLE_RATE).astype(int)
        knocks[at] = rng.uniform(0.5, 1.0, len(at))
        tone += rng.uniform(2, 6) * _resonate(knocks, rng.uniform(150, 600), 4)
    elif kind == "compressor":
        stroke = np.maximum(np.sin(phase), 0) ** 8
        tone += rng.uniform(0.5, 1.5) * stroke * _resonate(rng.standard_normal(n), rng.uniform(300, 1200), 3)
    else:  # spindle: high whine of the motor poles
        tone += rng.uniform(0.3, 1.0) * np.sin(int(rng.integers(20, 80)) * phase)
    flow = _pink(rng, n, rng.uniform(0.5, 1.5))
    for _ in range(int(rng.integers(3, 7))):  # structural modes shaped out of the flow noise
        flow += rng.uniform(2, 6) * _resonate(flow, rng.uniform(500, 6000), rng.uniform(8, 40))
    machine = tone / _rms(tone) + rng.uniform(0.3, 1.0) * flow / _rms(flow)
    return machine / _rms(machine)


def _bearing_clicks(rng: np.random.Generator, f_rot: float, phase: np.ndarray) -> np.ndarray:
    """(n,) impacts at a bearing defect rate, each ringing resonances; unit RMS."""
    rate = f_rot * rng.uniform(2.5, 7.0)
    times = np.arange(rng.uniform(0, 1 / rate), 1.0, 1 / rate)
    times = times + rng.normal(0, rng.uniform(0.005, 0.03) / rate, len(times))
    idx = np.clip((times * SAMPLE_RATE).astype(int), 0, CLIP_SAMPLES - 1)
    amps = rng.lognormal(0, rng.uniform(0.1, 0.5), len(idx))
    if rng.random() < 0.5:  # load zone: stronger once per revolution
        amps *= 1 + rng.uniform(0.3, 0.9) * np.cos(phase[idx])
    pulses = np.zeros(CLIP_SAMPLES)
    np.add.at(pulses, idx, amps)
    ring = sum(rng.uniform(0.5, 1.0) * _resonate(pulses, rng.uniform(1500, 7000), rng.uniform(15, 60))
               for _ in range(int(rng.integers(1, 4))))
    return ring / _rms(ring)


def _room(rng: np.random.Generator) -> np.ndarray:
    """A random decaying room impulse response (direct sound first)."""
    rt = rng.uniform(0.05, 0.4)
    m = int(rt * SAMPLE_RATE)
    ir = rng.standard_normal(m) * np.exp(-6.9 * np.arange(m) / m) * rng.uniform(0.05, 0.3)
    ir[0] = 1.0
    return ir


def _background(rng: np.random.Generator) -> np.ndarray:
    """(n,) plant noise: another machine, mains hum, hiss and distant impacts; unit RMS."""
    n = CLIP_SAMPLES
    other = _harmonics(rng, _rotation_phase(rng, rng.uniform(10, 80)), np.arange(1, 8), 0.4)
    mains = rng.choice([50.0, 60.0])
    hum = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * mains * k * _T + rng.uniform(0, 6.3))
              for k in (1, 2, 3, 5))
    hiss = _pink(rng, n, rng.uniform(0, 1))
    hits = np.zeros(n)
    hits[rng.integers(0, n, int(rng.integers(0, 4)))] = rng.uniform(3, 20)
    hits = _resonate(hits, rng.uniform(80, 900), 3)
    mix = (rng.uniform(0, 1) * other / _rms(other) + rng.uniform(0, 0.8) * hum / _rms(hum)
           + rng.uniform(0.3, 1.0) * hiss + rng.uniform(0, 0.5) * hits)
    return mix / _rms(mix)


def render_machine_sound_scene(rng: np.random.Generator, machine: str) -> np.ndarray:
    """A 1 s, 16 kHz mono clip ``(1, CLIP_SAMPLES)`` float32 in [-1, 1] of a machine in state ``machine``, channels
    first as :func:`~pipelines.lines.factory.synth.render_machine_sound`'s."""
    if machine not in MACHINE_STATES:
        raise ValueError(f"unknown machine state {machine!r}; expected one of {MACHINE_STATES}")
    kind = str(rng.choice(_MACHINES))
    low, high = {"conveyor": (8, 25), "spindle": (30, 60)}.get(kind, (12, 55))
    f_rot = rng.uniform(low, high)
    phase = _rotation_phase(rng, f_rot)
    sound = _machine(rng, kind, f_rot, phase)
    if machine == "bearing_click":
        level = rng.uniform(0.2, 0.4) if rng.random() < 0.2 else rng.uniform(0.45, 1.4)
        sound = sound + level * _bearing_clicks(rng, f_rot, phase)
    elif machine == "imbalance_hum":
        strength = rng.uniform(0.8, 1.4) if rng.random() < 0.2 else rng.uniform(1.5, 4.0)
        beat = 1 + rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * rng.uniform(0.5, 3) * _T + rng.uniform(0, 6.3))
        hum = np.sin(phase) + rng.uniform(0.15, 0.5) * np.sin(2 * phase + rng.uniform(0, 6.3))
        wobble = 1 + rng.uniform(0.1, 0.35) * np.sin(phase + rng.uniform(0, 6.3))
        sound = sound * wobble + strength * np.sqrt(2) * beat * hum / _rms(hum) * 0.7
    sound = fftconvolve(sound, _room(rng))[:CLIP_SAMPLES]
    snr = 10 ** (rng.uniform(5, 30) / 20)
    mix = sound / _rms(sound) + _background(rng) / snr
    mix *= rng.uniform(0.08, 0.3) / _rms(mix)
    peak = float(np.abs(mix).max())
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix.astype(np.float32)[None]
