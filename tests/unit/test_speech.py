"""Speech for the service desk line: decoding spoken messages (connectors.audio.decode_speech, speech_chunks), bad
audio refused with its reason, espeak-ng complaints (speak), word error rate, and recognition with pocketsphinx
(domain grammar, keyword spotting, the general model for free speech), all on the real tools (espeak-ng,
pocketsphinx and its packaged model, torchcodec)."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as F
from torchcodec.encoders import AudioEncoder

from connectors.audio import MIN_SPEECH_S, SPEECH_LOUDNESS_LUFS, SPEECH_RATE, decode_speech, speech_chunks
from connectors.records import InputError, encode_wav
from pipelines.lines.service.speech import Recognizer, Transcript, speak, word_edits, word_error_rate, words

CARDS = Path("/usr/share/pocketsphinx/test/data/cards")
PHRASES = ["my kettle sparks on its base", "the seal of my boiler is leaking",
           "my pressure washer has a cracked casing", "the battery contacts are corroded"]


def tone(seconds: float = 2.0, rate: int = 16000, amplitude: float = 0.3, channels: int = 1) -> np.ndarray:
    """``(channels, T)`` float32: a 220 Hz tone."""
    t = np.arange(round(seconds * rate)) / rate
    return np.repeat((amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None], channels, axis=0)


def encoded(wave_: np.ndarray, rate: int, fmt: str) -> bytes:
    return AudioEncoder(torch.from_numpy(wave_), sample_rate=rate).to_tensor(format=fmt).numpy().tobytes()


def float_wav(samples: np.ndarray, rate: int) -> bytes:
    """A mono IEEE-float WAV (format 3), which may carry NaN."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt " +
            struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


# -- decoding spoken messages ----------------------------------------------------------------------------------


def test_speech_is_mono_16k_and_loudness_normalised() -> None:
    stereo = tone(2.0, 44100, amplitude=0.05, channels=2)
    for data in (encode_wav(stereo, 44100), encoded(stereo, 44100, "flac"), encoded(stereo, 44100, "mp3")):
        samples, rate = decode_speech("T1", data)
        assert rate == SPEECH_RATE and samples.ndim == 1 and samples.dtype == np.float32
        assert abs(len(samples) / rate - 2.0) < 0.1
        loudness = float(F.loudness(torch.from_numpy(samples)[None], rate))
        assert abs(loudness - SPEECH_LOUDNESS_LUFS) < 1.0


def test_a_loud_message_is_not_lifted_past_its_peak_cap() -> None:
    spiky = np.zeros((1, 32000), np.float32)
    spiky[0, ::4000] = 0.9  # eight clicks: quiet on average, loud at the peaks
    spiky += tone(2.0, amplitude=0.001)
    samples, _ = decode_speech("T1", encode_wav(spiky, 16000))
    assert np.abs(samples).max() <= 0.95 + 1e-6


BAD = {
    "empty": (b"", "empty"),
    "not audio": (b"this is a text file, not a recording\n" * 20, "not decodable"),
    "NaN samples": (float_wav(np.where(np.arange(16000) % 50 == 0, np.nan, tone()[0, :16000]), 16000), "NaN"),
    "absurd rate (1 kHz)": (encode_wav(tone(), 1000), "sample rate 1000 Hz"),
    "absurd rate (900 kHz)": (encode_wav(tone(), 900_000), "sample rate 900000 Hz"),
    "truncated WAV": (encode_wav(tone(), 16000)[:30000], "truncated"),
    "truncated MP3": (encoded(tone(3.0), 16000, "mp3")[:4000], "truncated"),
    "truncated FLAC": (encoded(tone(3.0), 16000, "flac")[:20000], "not decodable"),
    "silent": (encode_wav(np.zeros((1, 32000), np.float32), 16000), "silent"),
    "clipped": (encode_wav(np.clip(tone() * 10, -1, 1), 16000), "clipped"),
    "too short": (encode_wav(tone(MIN_SPEECH_S / 4), 16000), "lasts"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_audio_is_refused_with_its_reason(case: str) -> None:
    data, reason = BAD[case]
    with pytest.raises(InputError) as caught:
        decode_speech("T42", data)
    assert caught.value.item_id == "T42"
    assert reason in caught.value.reason
    assert str(caught.value).startswith("T42: ")


def test_speech_chunks_cover_the_wave_in_order() -> None:
    samples = np.arange(40_000, dtype=np.float32)
    chunks = list(speech_chunks(samples, 16000, 1.0))
    assert [len(c) for c in chunks] == [16000, 16000, 8000]
    assert np.array_equal(np.concatenate(chunks), samples)
    with pytest.raises(ValueError):
        next(speech_chunks(samples, 16000, 0.0))


# -- espeak-ng complaints --------------------------------------------------------------------------------------


def pcm(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768, w.getframerate()


def test_speak_gives_a_wav_in_any_voice_with_seeded_noise() -> None:
    clean, rate = pcm(speak("my kettle sparks", voice="en-gb-x-rp"))
    assert rate == 22050 and 0.5 < len(clean) / rate < 3.0 and np.abs(clean).max() <= 0.9 + 1e-4
    assert speak("my kettle sparks", voice="en+f3") != speak("my kettle sparks", voice="en-us")
    noisy = speak("my kettle sparks", voice="en-gb-x-rp", noise_db=10.0, seed=3)
    assert noisy == speak("my kettle sparks", voice="en-gb-x-rp", noise_db=10.0, seed=3)
    assert noisy != speak("my kettle sparks", voice="en-gb-x-rp", noise_db=10.0, seed=4)
    added = pcm(noisy)[0] - clean
    snr = 10 * np.log10(np.mean(clean**2) / np.mean(added**2))
    assert 9.0 < snr < 11.0


def test_speak_refuses_what_it_cannot_say() -> None:
    with pytest.raises(ValueError):
        speak(" ,. ")
    with pytest.raises(RuntimeError, match="xx-nope"):
        speak("hello", voice="xx-nope")


# -- word error rate -------------------------------------------------------------------------------------------


def test_words_normalise_case_punctuation_and_joiners() -> None:
    assert words("My E-bike's power_base: WET!") == ["my", "e", "bike's", "power", "base", "wet"]


@pytest.mark.parametrize(("reference", "hypothesis", "edits"), [
    ("my boiler is leaking", "my boiler is leaking", 0),
    ("my boiler is leaking", "my boiler leaking", 1),  # deletion
    ("my boiler is leaking", "my old boiler is leaking", 1),  # insertion
    ("my boiler is leaking", "my kettle is leaking", 1),  # substitution
    ("my boiler is leaking", "", 4),
    ("my boiler is leaking", "leaking is boiler my", 4),
])
def test_word_edits(reference: str, hypothesis: str, edits: int) -> None:
    assert word_edits(reference, hypothesis) == (edits, 4)


def test_word_error_rate() -> None:
    assert word_error_rate("My boiler, is leaking.", "my boiler leaking") == 0.25
    assert word_error_rate("one", "two three four") == 3.0
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "noise") == 1.0


# -- recognition -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer(PHRASES)


def spoken(text: str, voice: str = "en-us", noise_db: float | None = 25.0) -> tuple[np.ndarray, int]:
    return decode_speech("T1", speak(text, voice=voice, speed=160, pitch=50, noise_db=noise_db, seed=1))


@pytest.mark.parametrize("voice", ["en-us", "en-gb-x-rp"])
def test_a_phrase_of_the_grammar_is_heard_exactly(recognizer: Recognizer, voice: str) -> None:
    samples, rate = spoken(PHRASES[1], voice)
    heard = recognizer.transcribe(samples, rate)
    assert heard == Transcript(PHRASES[1], "grammar", heard.confidence, len(samples) / rate)
    assert 0.5 < heard.confidence <= 1.0


def test_the_same_audio_reads_the_same_whatever_came_before(recognizer: Recognizer) -> None:
    complaint = spoken(PHRASES[1], "en-029", noise_db=22.0)
    first = recognizer.transcribe(*complaint)
    recognizer.transcribe(*spoken("i would like to order a pizza", "en+f4", noise_db=None))
    assert recognizer.transcribe(*complaint) == first


def test_a_new_sentence_of_the_grammar_words_is_heard(recognizer: Recognizer) -> None:
    text = "my kettle has a cracked casing"  # not a phrase: its words and pairs come from two of them
    assert text not in PHRASES
    heard = recognizer.transcribe(*spoken(text))
    assert heard.mode == "grammar" and word_error_rate(text, heard.text) <= 1 / 6


def test_audio_at_another_rate_is_resampled(recognizer: Recognizer) -> None:
    samples, rate = pcm(speak(PHRASES[0], noise_db=25.0, seed=1))  # 22050 Hz, not normalised
    assert rate != 16000
    assert recognizer.transcribe(samples, rate).text == PHRASES[0]


@pytest.mark.skipif(not CARDS.is_dir(), reason="Debian pocketsphinx-testdata is not installed")
def test_free_speech_falls_back_to_the_general_model(recognizer: Recognizer) -> None:
    samples, rate = decode_speech("cards-001", (CARDS / "001.wav").read_bytes())  # a real voice: "ten of clubs"
    heard = recognizer.transcribe(samples, rate)
    assert heard.mode == "general"
    assert word_error_rate("ten of clubs", heard.text) <= 1 / 3


def test_keywords_are_spotted_without_phrases() -> None:
    spotter = Recognizer([], keywords=["pressure washer", "kettle", "burnt connector"])
    heard = spotter.transcribe(*spoken("my pressure washer has a burnt connector", noise_db=30.0))
    assert heard.mode == "keywords" and "burnt connector" in heard.text
    assert spotter.transcribe(*spoken("i would like to order a pizza", noise_db=30.0)).mode == "general"


def test_words_the_dictionary_lacks_are_listed_and_left_out() -> None:
    odd = Recognizer(["my kettle zqxwv sparks"], keywords=["blorptastic"])
    assert odd.unknown_words == ["blorptastic", "zqxwv"]
    assert odd.phrases == ["my kettle sparks"] and odd.keywords == []
