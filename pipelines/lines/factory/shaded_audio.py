"""The "shaded" renderer's machine sound: a 1 s, 16 kHz clip of a machine on the line, healthy or faulty.

Written independently of :func:`pipelines.lines.factory.synth.render_machine_sound`. The machine is a pump, fan,
gearbox, piston compressor or conveyor motor turning at a drifting shaft rate, each with its own tonal structure
(vane or blade passing, gear mesh with sidebands, piston harmonics and valve noise, mains hum and rotor slots),
heard in a reverberant hall with other sounds (forklift beeps, voice-like babble, hiss, distant knocks) through a
microphone. A **bearing click** is a train of impacts at a fault frequency derived from a drawn bearing's geometry
(outer race, inner race modulated by the shaft, or a rolling element modulated by the cage), with slip jitter,
each ringing one to three structural resonances. An **imbalance hum** is a strong once-per-revolution component
in one of several signatures (pure, beating against a near frequency, looseness harmonics, or the machine's noise
swelling once a turn). Fault levels vary widely, from barely audible to dominant.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

from pipelines.lines.factory.synth import CLIP_SAMPLES, MACHINE_STATES, SAMPLE_RATE

_T = np.arange(CLIP_SAMPLES) / SAMPLE_RATE


def _band(rng: np.random.Generator, low: float, high: float, n: int = CLIP_SAMPLES) -> np.ndarray:
    """White noise band-passed to ``low..high`` Hz, unit RMS ``(n,)``."""
    sos = butter(2, [low, min(high, SAMPLE_RATE / 2 * 0.95)], btype="band", fs=SAMPLE_RATE, output="sos")
    return _unit(sosfilt(sos, rng.standard_normal(n)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _slow(rng: np.random.Generator, rate: float) -> np.ndarray:
    """A smooth random curve ``(CLIP_SAMPLES,)`` of unit spread, changing about ``rate`` times a second."""
    knots = rng.standard_normal(int(rate) + 3)
    return np.interp(_T * (rate + 1), np.arange(len(knots)), knots)


def _harmonics(rng: np.random.Generator, phase: np.ndarray, orders: np.ndarray, slope: float) -> np.ndarray:
    """Sum of ``sin(k * phase)`` over ``orders`` with amplitudes falling as ``k ** -slope`` and random phases."""
    out = np.zeros_like(phase)
    for k in orders:
        out += rng.uniform(0.5, 1.0) * k ** -slope * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


# ------------------------------------------------------------------------------------------------------ machines
# Each returns the machine's healthy sound ``(CLIP_SAMPLES,)``, unit RMS, from its shaft phase (radians) over the clip.
def _pump(rng: np.random.Generator, phase: np.ndarray) -> np.ndarray:
    vanes = int(rng.integers(5, 10))
    tones = _harmonics(rng, vanes * phase, np.arange(1, 4), 1.0)
    flow = _band(rng, rng.uniform(150, 600), rng.uniform(1500, 5000))
    return _unit(tones + rng.uniform(0.4, 1.5) * flow)


def _fan(rng: np.random.Generator, phase: np.ndarray) -> np.ndarray:
    blades = int(rng.integers(3, 13))
    passing = np.sin(blades * phase)
    air = _band(rng, 60, rng.uniform(1000, 4000)) * (1 + rng.uniform(0, 0.3) * passing)
    return _unit(air + rng.uniform(0.1, 0.6) * _harmonics(rng, blades * phase, np.arange(1, 3), 1.5))


def _gearbox(rng: np.random.Generator, phase: np.ndarray) -> np.ndarray:
    teeth = int(rng.integers(15, 46))
    mesh = np.zeros_like(phase)
    for h in range(1, 4):  # mesh harmonics, each modulated once a turn: sidebands at +-1x
        depth = rng.uniform(0.05, 0.5)
        mesh += h ** -1.2 * (1 + depth * np.cos(phase + rng.uniform(0, 6.3))) * np.sin(h * teeth * phase)
    return _unit(mesh + rng.uniform(0.1, 0.5) * _band(rng, 200, 6000))


def _compressor(rng: np.random.Generator, phase: np.ndarray) -> np.ndarray:
    pistons = int(rng.integers(1, 4))
    pulses = _harmonics(rng, pistons * phase, np.arange(1, 25), rng.uniform(0.8, 1.6))
    gate = np.clip(np.cos(pistons * phase + rng.uniform(0, 6.3)), 0, 1) ** 8  # valve noise once a stroke
    valves = _band(rng, 1000, 6000) * gate
    return _unit(_unit(pulses) + rng.uniform(0.2, 0.8) * _unit(valves))


def _motor(rng: np.random.Generator, phase: np.ndarray) -> np.ndarray:
    mains = rng.choice([50.0, 60.0])
    hum = _harmonics(rng, 2 * np.pi * 2 * mains * _T, np.arange(1, 6), 1.2)  # magnetostriction: 2x mains
    slots = int(rng.integers(20, 45))
    whine = rng.uniform(0.05, 0.4) * np.sin(slots * phase)
    rollers = rng.uniform(0.2, 1.0) * _band(rng, 40, 400)  # belt and rollers
    return _unit(hum + whine + rollers + 0.2 * _band(rng, 500, 7000))


_MACHINES: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "pump": _pump, "fan": _fan, "gearbox": _gearbox, "compressor": _compressor, "conveyor_motor": _motor,
}


# ------------------------------------------------------------------------------------------------------ faults
def _bearing_clicks(rng: np.random.Generator, phase: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Impacts at a bearing fault frequency with slip jitter, each ringing structural resonances; unit RMS."""
    balls = int(rng.integers(7, 14))
    ratio = rng.uniform(0.15, 0.32) * np.cos(np.radians(rng.uniform(0, 20)))  # ball / pitch diameter, contact
    where = rng.choice(["outer", "inner", "ball"], p=[0.45, 0.35, 0.2])
    per_turn, envelope = {  # fault impacts per shaft revolution, and what modulates their strength
        "outer": (balls / 2 * (1 - ratio), np.ones_like(phase)),
        "inner": (balls / 2 * (1 + ratio), 1 + rng.uniform(0.3, 1.0) * np.cos(phase)),  # through the load zone
        "ball": (1 / (2 * ratio) * (1 - ratio ** 2),
                 1 + rng.uniform(0.3, 1.0) * np.cos(0.5 * (1 - ratio) * phase)),  # the cage carries it round
    }[str(where)]
    # impact times: where the fault phase crosses whole turns, each late or early by slip
    fault_phase = per_turn * phase / (2 * np.pi) + rng.uniform(0, 1)
    crossings = np.nonzero(np.diff(np.floor(fault_phase)) > 0)[0]
    period = SAMPLE_RATE / (per_turn * float(rate.mean()))
    onsets = np.round(crossings + rng.normal(0, rng.uniform(0.005, 0.03) * period, len(crossings))).astype(int)
    onsets = onsets[(onsets >= 0) & (onsets < CLIP_SAMPLES)]
    train = np.zeros(CLIP_SAMPLES)
    np.add.at(train, onsets, np.clip(envelope[onsets], 0.05, None) * rng.lognormal(0, 0.25, len(onsets)))
    tk = np.arange(int(0.02 * SAMPLE_RATE)) / SAMPLE_RATE
    ring = np.zeros_like(tk)
    for _ in range(int(rng.integers(1, 4))):
        ring += rng.uniform(0.3, 1) * np.exp(-tk / (rng.uniform(0.3, 4) * 1e-3)) * np.sin(
            2 * np.pi * rng.uniform(1200, 7000) * tk + rng.uniform(0, 6.3))
    return _unit(fftconvolve(train, ring)[:CLIP_SAMPLES] + 1e-9 * rng.standard_normal(CLIP_SAMPLES))


def _imbalance(rng: np.random.Generator, phase: np.ndarray, body: np.ndarray) -> np.ndarray:
    """A strong once-per-revolution component in one of several signatures; unit RMS."""
    signature = rng.choice(["pure", "beating", "looseness", "swelling"])
    once = np.sin(phase + rng.uniform(0, 6.3))
    if signature == "pure":
        out = once + rng.uniform(0.05, 0.3) * np.sin(2 * phase)
    elif signature == "beating":  # against a near frequency (a second shaft, the belt)
        offset = rng.uniform(0.4, 3.0)
        out = once + rng.uniform(0.5, 1.0) * np.sin(phase + 2 * np.pi * offset * _T)
    elif signature == "looseness":  # clipped motion: harmonics of 1x, the whole swaying slowly
        sway = 1 + rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * rng.uniform(0.5, 3) * _T)
        out = np.tanh(rng.uniform(1.5, 4) * once) * sway
    else:  # the machine's own sound swells once a turn
        out = body * rng.uniform(0.4, 1.0) * (np.cos(phase) + 0.3) + 0.5 * once
    return _unit(out)


# ------------------------------------------------------------------------------------------------------ scene
def _reverb(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """The hall: a few early reflections and an exponentially decaying diffuse tail (RT60 0.2-1.2 s)."""
    rt60 = rng.uniform(0.2, 1.2)
    n = int(min(rt60, 0.8) * SAMPLE_RATE)
    tail = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / (rt60 * SAMPLE_RATE))
    tail = sosfilt(butter(1, rng.uniform(2000, 6000), fs=SAMPLE_RATE, output="sos"), tail)  # air absorbs highs
    ir = np.zeros(n)
    ir[0] = 1.0
    for _ in range(int(rng.integers(2, 6))):
        ir[int(rng.uniform(0.003, 0.05) * SAMPLE_RATE)] += rng.uniform(0.2, 0.7) * rng.choice([-1, 1])
    wet = fftconvolve(x, tail)[:CLIP_SAMPLES]
    dry = fftconvolve(x, ir)[:CLIP_SAMPLES]
    mix = rng.uniform(0.1, 0.7)
    return (1 - mix) * _unit(dry) + mix * _unit(wet)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Other sounds of the hall, unit-ish RMS: hiss, and sometimes babble, a forklift's beeps, distant knocks."""
    out = rng.uniform(0.05, 0.4) * rng.standard_normal(CLIP_SAMPLES)
    if rng.random() < 0.4:  # voices: speech-band noise in syllable-rate bursts
        for _ in range(int(rng.integers(1, 5))):
            syllables = np.clip(_slow(rng, rng.uniform(3, 7)), 0, None) ** 2
            out += rng.uniform(0.2, 1.0) * _band(rng, rng.uniform(150, 400), rng.uniform(2000, 3500)) * syllables
    if rng.random() < 0.2:  # a reversing forklift
        beep = np.sin(2 * np.pi * rng.uniform(900, 3000) * _T)
        on = (_T * rng.uniform(1, 3) + rng.uniform(0, 1)) % 1 < rng.uniform(0.3, 0.6)
        out += rng.uniform(0.2, 1.0) * beep * on
    for _ in range(int(rng.poisson(0.4))):  # a distant knock or drop
        at = int(rng.integers(0, CLIP_SAMPLES - 800))
        decay = np.exp(-np.arange(800) / rng.uniform(40, 200))
        out[at:at + 800] += rng.uniform(0.5, 3) * rng.standard_normal(800) * decay
    return out


def render_machine_sound_shaded(rng: np.random.Generator, machine: str) -> np.ndarray:
    """A 1 s mono clip ``(1, 16000)`` float32 in -1..1 of a machine in state ``machine`` (one of ``MACHINE_STATES``),
    channels first as :func:`~pipelines.lines.factory.synth.render_machine_sound`'s.

    The same ``rng`` state gives the same machine, hall and background whatever ``machine`` is; the fault is
    drawn from a child generator seeded at a fixed point.
    """
    if machine not in MACHINE_STATES:
        raise ValueError(f"unknown machine state {machine!r}; expected one of {MACHINE_STATES}")
    shaft = float(np.exp(rng.uniform(np.log(15), np.log(60))))  # 900..3600 rpm
    rate = shaft * (1 + rng.uniform(0.002, 0.03) * _slow(rng, rng.uniform(0.5, 3)))  # speed drift
    phase = 2 * np.pi * np.cumsum(rate) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
    kind = str(rng.choice(list(_MACHINES)))
    body = _MACHINES[kind](rng, phase)
    body = body + rng.uniform(0, 0.15) * np.sin(phase + rng.uniform(0, 6.3))  # every machine turns a little unevenly
    fault_rng = np.random.default_rng(rng.integers(0, 2 ** 63, 2))
    if machine == "bearing_click":
        body = body + 10 ** (fault_rng.uniform(-12, 6) / 20) * _bearing_clicks(fault_rng, phase, rate)
    elif machine == "imbalance_hum":
        body = body + 10 ** (fault_rng.uniform(-6, 10) / 20) * _imbalance(fault_rng, phase, body)
    scene = _reverb(rng, body) + 10 ** (rng.uniform(-30, -6) / 20) * _background(rng)
    mic = butter(2, [rng.uniform(8, 15), rng.uniform(5000, 7800)], btype="band", fs=SAMPLE_RATE, output="sos")
    clip = sosfilt(mic, scene)
    clip *= rng.uniform(0.1, 0.8) / (np.abs(clip).max() + 1e-12)
    return clip.astype(np.float32)[None]
