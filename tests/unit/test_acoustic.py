"""Adapting the recogniser's acoustic model (pipelines/lines/service/acoustic.py) with the real tools: Debian's
sphinxtrain and sphinxbase, pocketsphinx's packaged model, espeak-ng voices; and the recogniser's wider grammar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connectors.audio import decode_speech
from pipelines.lines.service import acoustic
from pipelines.lines.service.acoustic import (ADAPTED_FILES, AdaptationError, adapt, adapt_to_recording,
                                              decoder_files, read_sendump, stock_model, write_mixture_weights)
from pipelines.lines.service.speech import Recognizer, common, decoder_input, speak

PHRASES = ["my kettle sparks on its base", "the seal of my boiler is leaking",
           "my pressure washer has a cracked casing", "the battery contacts are corroded"]
TOOLS_MISSING = [tool for tool in acoustic.TOOLS if acoustic._tool(tool) is None]
needs_tools = pytest.mark.skipif(bool(TOOLS_MISSING), reason=f"adaptation tools missing: {TOOLS_MISSING} "
                                                              "(make system-deps installs them)")


def utterance(text: str, voice: str = "en-us", speed: int = 160, seed: int = 0) -> tuple[np.ndarray, int, str]:
    wave, rate = decode_speech("u", speak(text, voice=voice, speed=speed, noise_db=30.0, seed=seed))
    return wave, rate, text


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model adapted on 24 utterances of the phrases (two voices, three speeds)."""
    if TOOLS_MISSING:
        pytest.skip(f"adaptation tools missing: {TOOLS_MISSING}")
    out = tmp_path_factory.mktemp("acoustic")
    spoken = [utterance(p, voice, speed, k) for k, (p, voice, speed) in enumerate(
        (p, v, s) for p in PHRASES for v in ("en-us", "en+f3") for s in (140, 160, 180))]
    report = adapt(spoken, out, progress=False)
    assert (report.utterances, report.skipped) == (24, 0) and report.audio_s > 20
    return out


def test_sendump_reads_as_mixture_weights_that_pocketsphinx_loads(tmp_path: Path) -> None:
    weights = read_sendump(stock_model() / "sendump")
    assert weights.shape == (5126, 3, 128)
    assert np.allclose(weights.sum(axis=-1), 1.0) and (weights > 0).all()
    write_mixture_weights(tmp_path / "mixture_weights", weights)
    import pocketsphinx

    # pocketsphinx checks the s3 checksum and refuses the file (a fatal error) when it is wrong
    decoder = pocketsphinx.Decoder(hmm=str(stock_model()), mixw=str(tmp_path / "mixture_weights"),
                                   lm=None, loglevel="FATAL")
    assert decoder is not None


@needs_tools
def test_adaptation_writes_a_model_the_recogniser_runs(adapted: Path) -> None:
    assert {p.name for p in adapted.iterdir()} == {*ADAPTED_FILES, "adaptation.json"}
    stock = (stock_model() / "means").read_bytes()
    assert (adapted / "means").read_bytes() != stock and len((adapted / "means").read_bytes()) == len(stock)
    recognizer = Recognizer(PHRASES, acoustic=adapted)
    heard = recognizer.transcribe(*utterance("the seal of my boiler is leaking", "en", 170, seed=7)[:2])
    assert (heard.text, heard.mode) == ("the seal of my boiler is leaking", "grammar")


@needs_tools
def test_free_speech_keeps_the_stock_model_on_the_general_search(adapted: Path) -> None:
    cards = Path("/usr/share/pocketsphinx/test/data/cards/001.wav")
    if not cards.is_file():
        pytest.skip("Debian pocketsphinx-testdata is not installed")
    wave, rate = decode_speech(cards.name, cards.read_bytes())
    with_adapted, stock = Recognizer(PHRASES, acoustic=adapted, min_coverage=0.0), Recognizer([])
    assert with_adapted.transcribe(wave, rate).text == stock.transcribe(wave, rate).text


def test_utterances_with_words_the_dictionary_lacks_are_left_out(tmp_path: Path) -> None:
    if TOOLS_MISSING:
        pytest.skip(f"adaptation tools missing: {TOOLS_MISSING}")
    wave, rate, _ = utterance("my kettle sparks")
    with pytest.raises(AdaptationError, match="no utterance to adapt on .2 skipped"):
        adapt([(wave, rate, "my kettle zqxwv"), (wave, rate, "")], tmp_path, progress=False)


def test_a_missing_tool_is_named_with_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # stands in for a machine without sphinxtrain: the lookup of that one tool is made to fail
    real = acoustic._tool
    monkeypatch.setattr(acoustic, "_tool", lambda name: None if name == "bw" else real(name))
    with pytest.raises(AdaptationError, match=r"bw \(Debian package sphinxtrain\)"):
        adapt([utterance("my kettle sparks")], tmp_path, progress=False)


@needs_tools
def test_a_recordings_labelled_voice_messages_are_adapted_on(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    tickets = Path(__file__).resolve().parents[1] / "data" / "recordings" / "service-tickets"
    # 8 labelled tickets with a complaint; the bad voice messages have no label, follow-ups no complaint
    with caplog.at_level("WARNING", logger="fusionline.service.acoustic"):
        report = adapt_to_recording(tickets, tmp_path, progress=False)
    assert (report.utterances, report.skipped) == (8, 0)
    assert "bad-truncated: left out of the adaptation" in caplog.text and "truncated" in caplog.text
    assert adapt_to_recording(tickets, tmp_path, limit=3, progress=False).utterances == 3
    assert decoder_files(tmp_path)["sendump"] == str(tmp_path / "sendump")


def test_a_recording_without_spoken_words_is_refused(tmp_path: Path) -> None:
    (tmp_path / "labels.jsonl").write_text('{"item_id": "T00000", "fault": "cracked_casing"}\n')
    with pytest.raises(ValueError, match="no labelled voice message to adapt on"):
        adapt_to_recording(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="limit must be positive"):
        adapt_to_recording(tmp_path, tmp_path / "out", limit=0, progress=False)


def test_a_folder_that_is_not_an_adapted_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "means").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lacks variances, sendump, transition_matrices"):
        decoder_files(tmp_path)


def test_common_words_are_the_general_models_likeliest() -> None:
    assert common(5) == ("the", "to", "i", "and", "a") and common(0) == ()
    assert len(set(common(3000))) == 3000


def test_the_grammar_learns_sentences_of_its_corpus() -> None:
    sentence = "unplug the power base and let it cool"
    wave, rate, _ = utterance(sentence, "en-us", 150)
    pcm = decoder_input(wave, rate)
    plain = Recognizer(PHRASES)
    wider = Recognizer(PHRASES, corpus=[sentence, "a cracked part is replaced", "a word zqxwv it lacks"])
    assert plain._decode("grammar", pcm)[0] != sentence  # "unplug", "power" ... are no phrase's words
    assert wider._decode("grammar", pcm)[0] == sentence
