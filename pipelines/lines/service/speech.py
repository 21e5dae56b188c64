"""Speech for the service desk: offline recognition of spoken complaints, synthetic complaints, word error rate.

**Recognition** (:class:`Recognizer`) runs pocketsphinx 5 with the US English acoustic model and dictionary that
ship inside its wheel (nothing is downloaded). A general language model fails on synthetic speech (it heard "and i
don't eat the" for an espeak sentence), so an utterance is first decoded with a *domain grammar* built from the
complaint phrases the recogniser is given: a back-off trigram model of those phrases (pocketsphinx's own ARPA
builder), which accepts the phrases and new sentences recombined from their words and word pairs, where a JSGF
grammar of the phrases accepts only the phrases themselves. Two things open it to phrasings it was not given: a
*corpus* of domain sentences (the repair guides' text) and the general model's most frequent English words, as
unigrams the grammar backs off to. The domain search may run an acoustic model adapted to the line's voices
(:mod:`~pipelines.lines.service.acoustic`); the general search keeps the stock model.

The domain reading is kept when it is a plausible complaint (most of its word pairs occur in the phrases and its
words are sure), or else when it is not implausible (a fair share of its word pairs occur in the phrases) and
explains the audio at least as well as the general language model does (path scores); otherwise the general
model's transcript is given. A recogniser given keywords and no phrases spots the keywords (pocketsphinx keyword
search) instead, and gives the general model's transcript when it hears none.

**Synthetic complaints** (:func:`speak`) are spoken by Debian's ``espeak-ng`` in any of its voices (``en-us``,
``en``, ``en-gb-x-rp``, ``en-029``, variants such as ``en+f3``), at a speed and pitch, with white noise at a chosen
signal-to-noise ratio.

Example:
    >>> from connectors.audio import decode_speech
    >>> recognizer = Recognizer(["my kettle sparks on its base", "the seal of my boiler is leaking"])
    >>> wave, rate = decode_speech("T1", speak("my boiler is leaking", voice="en-gb-x-rp", noise_db=25.0))
    >>> recognizer.transcribe(wave, rate)
    Transcript(text='my boiler is leaking', mode='grammar', confidence=0.97, seconds=1.4)
    >>> word_error_rate("my boiler is leaking", "my boiler leaking")
    0.25
"""

from __future__ import annotations

import io
import logging
import math
import re
import subprocess
import tempfile
import wave as wavfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from connectors.audio import SPEECH_RATE as RATE  # the acoustic model's rate: audio at another is resampled to it
from connectors.records import encode_wav

log = logging.getLogger("fusionline.speech")

#: Silence added before and after an utterance: pocketsphinx misreads speech that starts on the first frame.
PAD_S = 0.5
#: Dither added to the padded utterance, full scale 1: espeak's digital silence between words, a sound the acoustic
#: model never heard, cost en-gb-x-rp a fifth of its words with a dither of -80 dBFS, 3 to 8 % with -60 dBFS.
DITHER = 1e-3
#: A domain reading is taken without consulting the general model when at least this share of its word pairs
#: (sentence start and end included) occurs in the phrases and its mean word posterior is at least :data:`SURE`.
SURE_COVERAGE = 0.75
SURE = 0.8
#: Otherwise the domain reading must have at least this share of known word pairs and a path score (natural log) at
#: least :data:`DOMAIN_MARGIN` above the general model's: 0, the reading that explains the audio at least as well
#: wins (real read sentences score 0.04 to 0.86 below the general model's and their domain readings' coverage is
#: mostly under 0.4; synthetic complaints of the training voices mostly score above it).
MIN_COVERAGE = 0.4
DOMAIN_MARGIN = 0.0
#: Keyword spotting threshold of a keyword of ``n`` phones: ``KEYWORD_THRESHOLD ** n`` (longer keywords score lower).
KEYWORD_THRESHOLD = 0.01
#: Count each of the general model's commonest words gets in the domain grammar's unigrams (a phrase's word gets 1
#: per use): the grammar can back off to words no phrase has, a little less readily than to the phrases' own.
COMMON_WORD_COUNT = 1.0

Mode = Literal["grammar", "keywords", "general"]


@dataclass(frozen=True)
class Transcript:
    """What the recogniser heard.

    Attributes:
        text: the words, lowercase, space-separated ("" when nothing was heard).
        mode: ``grammar`` (the domain grammar's reading), ``keywords`` (the keywords spotted, in order) or
            ``general`` (the general language model's reading).
        confidence: the mean posterior probability of the words heard, 0..1 (0 when none was).
        seconds: the audio's length.
    """

    text: str
    mode: Mode
    confidence: float
    seconds: float


def words(text: str) -> list[str]:
    """``text`` as recognition writes it: lowercase words; hyphens, underscores and slashes split words; other
    punctuation goes (apostrophes inside a word stay)."""
    text = re.sub(r"[-_/]", " ", text.lower())
    return [w.strip("'") for w in re.findall(r"[a-z0-9']+", text) if w.strip("'")]


def word_edits(reference: str, hypothesis: str) -> tuple[int, int]:
    """``(edits, reference words)``: the fewest word substitutions, deletions and insertions that turn
    ``hypothesis`` into ``reference`` (both normalised by :func:`words`), and how many words the reference has."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))  # edits between ref[:i] and hyp[:j], one row i at a time
    for i, ref_word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word))
    return row[-1], len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference``: edits / reference words (:func:`word_edits`); may
    exceed 1. An empty reference scores 0 against an empty hypothesis, else 1."""
    edits, count = word_edits(reference, hypothesis)
    return edits / count if count else float(edits > 0)


class Recognizer:
    """Offline recognition of spoken complaints: a domain grammar of ``phrases``, keyword spotting of ``keywords``,
    the general language model for free speech (see the module's description).

    Args:
        phrases: sentences the domain grammar is built from (any case and punctuation); words the dictionary lacks
            are left out (and listed in :attr:`unknown_words`). Empty: no domain grammar.
        keywords: terms (one or more words): with phrases they join the grammar (each as a sentence of its own),
            without phrases they are spotted.
        corpus: further domain sentences for the grammar's word statistics (not its plausibility check); sentences
            with a word the dictionary lacks are left out.
        common_words: the general model's this many commonest words join the grammar's unigrams
            (:data:`COMMON_WORD_COUNT`); 0: none.
        acoustic: a folder with an adapted acoustic model (:func:`~pipelines.lines.service.acoustic.adapt`) for
            the domain search; None: the stock model.
        min_coverage: the share of known word pairs a domain reading that is not sure needs to be weighed against
            the general model's (:data:`MIN_COVERAGE`). With an adapted model 0 serves: the path scores alone tell
            its channel's speech (domain reading ahead) from other voices (general reading ahead), and a new
            phrasing has few known word pairs.

    The acoustic model and the general language model load in about a second (two acoustic models with
    ``acoustic``). A recogniser is not thread-safe: give each worker its own.
    """

    def __init__(self, phrases: Sequence[str], keywords: Sequence[str] = (), corpus: Sequence[str] = (),
                 common_words: int = 0, acoustic: str | Path | None = None, min_coverage: float = MIN_COVERAGE):
        import pocketsphinx

        from pipelines.lines.service.acoustic import decoder_files

        self._decoder = pocketsphinx.Decoder(lm=None, bestpath=True, loglevel="FATAL",
                                             **(decoder_files(acoustic) if acoustic is not None else {}))
        self._general = self._decoder if acoustic is None else \
            pocketsphinx.Decoder(lm=None, bestpath=True, loglevel="FATAL")
        known = self._known_words([*phrases, *keywords])
        self.unknown_words = sorted({w for text in [*phrases, *keywords] for w in words(text)} - known)
        if self.unknown_words:
            log.warning("recogniser: %d words not in the dictionary, left out: %s", len(self.unknown_words),
                        " ".join(self.unknown_words))
        self.phrases = _known_sentences(phrases, known)
        self.keywords = list(dict.fromkeys(_known_sentences(keywords, known)))
        in_corpus = self._known_words(corpus)
        self.corpus = [" ".join(words(s)) for s in corpus if words(s) and set(words(s)) <= in_corpus]
        self.min_coverage, self.common_words, self.adapted = min_coverage, common_words, acoustic is not None
        self._pairs = {pair for sentence in [*self.phrases, *self.keywords] for pair in _pairs(sentence.split())}
        self._searches: set[str] = set()
        with tempfile.TemporaryDirectory() as folder:
            if self.phrases:
                sentences = [*self.phrases, *self.keywords, *self.corpus]
                model = _domain_model(sentences, common(common_words), Path(folder))
                self._decoder.add_lm_file("grammar", model)
                self._searches.add("grammar")
            elif self.keywords:
                lines = [f"{k} /{KEYWORD_THRESHOLD ** self._phones(k):.0e}/" for k in self.keywords]
                (Path(folder) / "keywords.txt").write_text("\n".join(lines) + "\n")
                self._decoder.add_kws("keywords", str(Path(folder) / "keywords.txt"))
                self._searches.add("keywords")
        # the general model: the fallback for free speech
        self._general.add_lm_file("general", str(general_model()))

    def transcribe(self, wave: np.ndarray, rate: int) -> Transcript:
        """What ``wave`` (``(samples,)`` float32 mono in [-1, 1] at ``rate`` Hz, e.g. from
        :func:`connectors.audio.decode_speech`) says."""
        seconds = len(wave) / rate
        pcm = decoder_input(wave, rate)
        general: tuple[str, float, float] | None = None
        if "grammar" in self._searches:
            text, confidence, score = self._decode("grammar", pcm)
            if text and self._plausible(text, confidence):
                return Transcript(text, "grammar", confidence, seconds)
            general = self._decode("general", pcm)
            if text and self.coverage(text) >= self.min_coverage and score - general[2] >= DOMAIN_MARGIN:
                return Transcript(text, "grammar", confidence, seconds)
        elif "keywords" in self._searches:
            text, confidence, _ = self._decode("keywords", pcm)
            if text:
                return Transcript(text, "keywords", confidence, seconds)
        text, confidence, _ = general or self._decode("general", pcm)
        return Transcript(text, "general", confidence, seconds)

    def settings(self) -> dict[str, object]:
        """What the recogniser was built with beyond its code: the grammar's sentences and keywords, how many common
        words it knows, whether its domain search runs an adapted model, the coverage floor."""
        return {"phrases": self.phrases, "keywords": self.keywords, "corpus": self.corpus,
                "common_words": self.common_words, "adapted": self.adapted, "min_coverage": self.min_coverage}

    def coverage(self, text: str) -> float:
        """The share of the word pairs of ``text`` (sentence start and end included) that occur in the phrases or
        keywords."""
        pairs = _pairs(text.split())
        return sum(pair in self._pairs for pair in pairs) / len(pairs)

    def _plausible(self, text: str, confidence: float) -> bool:
        return self.coverage(text) >= SURE_COVERAGE and confidence >= SURE

    def _decode(self, search: str, pcm: bytes) -> tuple[str, float, float]:
        """``(text, mean word posterior, path score (natural log))`` of ``pcm`` under ``search``."""
        decoder = self._general if search == "general" else self._decoder
        decoder.activate_search(search)
        decoder.reinit_feat()  # else the last utterance's cepstral mean and noise floor carry over: another reading
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        if hypothesis is None or not hypothesis.hypstr.strip():
            return "", 0.0, -math.inf
        heard = [s for s in decoder.seg() if not s.word.startswith(("<", "["))]  # no silence, noise or sentence marks
        confidence = float(np.mean([s.prob for s in heard])) if heard else 0.0
        score = math.log(hypothesis.score) if hypothesis.score > 0 else -math.inf
        return " ".join(words(hypothesis.hypstr)), confidence, score

    def _phones(self, term: str) -> int:
        return sum(len(self._decoder.lookup_word(w).split()) for w in term.split())

    def _known_words(self, texts: Iterable[str]) -> set[str]:
        return {w for text in texts for w in words(text) if self._decoder.lookup_word(w) is not None}


def _known_sentences(texts: Iterable[str], known: set[str]) -> list[str]:
    """Each text normalised, its words the dictionary lacks left out; texts left empty dropped."""
    sentences = (" ".join(w for w in words(text) if w in known) for text in texts)
    return [s for s in sentences if s]


def _pairs(sentence: list[str]) -> list[tuple[str, str]]:
    padded = ["<s>", *sentence, "</s>"]
    return list(zip(padded, padded[1:]))


def general_model() -> Path:
    """The general US English language model inside the pocketsphinx wheel (beside its acoustic model)."""
    from pipelines.lines.service.acoustic import stock_model

    return stock_model().parent / "en-us.lm.bin"


@lru_cache(maxsize=4)
def common(count: int) -> tuple[str, ...]:
    """The ``count`` dictionary words the general language model finds likeliest on their own (unigram
    probability), likeliest first."""
    import pocketsphinx

    from pipelines.lines.service.acoustic import dictionary

    if count <= 0:
        return ()
    general = pocketsphinx.NGramModel.readfile(str(general_model()))
    entries = (line.split(maxsplit=1)[0] for line in dictionary().read_text().splitlines() if line.strip())
    base = [w for w in dict.fromkeys(entries) if "(" not in w]  # "word(2)" is a second pronunciation
    return tuple(sorted(base, key=lambda w: -general.prob([w]))[:count])


def _domain_model(sentences: list[str], common_words: Sequence[str], folder: Path) -> str:
    """An ARPA back-off trigram model of ``sentences``, with ``common_words`` as unigrams of their own
    (:data:`COMMON_WORD_COUNT`), written into ``folder``; its path."""
    from pocketsphinx.lm import ArpaBoLM

    model = ArpaBoLM(text="\n".join(sentences) + "\n", add_start=True)
    for word in common_words:
        model.grams_1.setdefault(word, COMMON_WORD_COUNT)
    model.compute()
    path = folder / "grammar.arpa"
    with path.open("w") as out:
        model.write(out)
    return str(path)


def decoder_input(wave: np.ndarray, rate: int) -> bytes:
    """``wave`` as the decoder reads it: 16-bit PCM at :data:`RATE`, padded with :data:`PAD_S` of dithered
    silence each side (the dither's seed is fixed: the same audio decodes the same way)."""
    if rate != RATE:
        import torch
        import torchaudio.functional as F

        wave = F.resample(torch.from_numpy(np.ascontiguousarray(wave, np.float32)), rate, RATE).numpy()
    pad = np.zeros(round(PAD_S * RATE), np.float32)
    padded = np.concatenate([pad, np.asarray(wave, np.float32), pad])
    padded += np.random.default_rng(0).normal(0.0, DITHER, padded.shape).astype(np.float32)
    return (np.clip(padded, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def speak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50, noise_db: float | None = None,
          seed: int = 0) -> bytes:
    """``text`` spoken by ``espeak-ng``: 16-bit PCM WAV bytes at espeak's rate (22050 Hz).

    Args:
        voice: an espeak-ng voice (``espeak-ng --voices=en`` lists them; ``+f3``-style variants too).
        speed: words per minute (espeak's default 175).
        pitch: 0..99 (espeak's default 50).
        noise_db: white noise at this signal-to-noise ratio (dB, against the speech's RMS); None: clean.
        seed: the noise's seed.

    Raises ValueError for empty text, RuntimeError when espeak-ng fails (e.g. an unknown voice).
    """
    if not words(text):
        raise ValueError("nothing to speak: the text holds no word")
    done = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"],
                          input=text.encode(), capture_output=True, check=False)
    if done.returncode != 0 or len(done.stdout) <= 44:
        raise RuntimeError(f"espeak-ng (voice {voice!r}) failed: {done.stderr.decode(errors='replace').strip()}")
    with wavfile.open(io.BytesIO(done.stdout)) as stream:  # --stdout announces no length: read what is there
        rate = stream.getframerate()
        raw = stream.readframes(stream.getnframes())
    speech = np.frombuffer(raw[: len(raw) // 2 * 2], "<i2").astype(np.float32) / 32768.0
    if noise_db is not None:
        rms = float(np.sqrt(np.mean(speech**2)))
        noise = np.random.default_rng(seed).normal(0.0, rms * 10.0 ** (-noise_db / 20.0), speech.shape)
        speech = speech + noise.astype(np.float32)
    peak = float(np.abs(speech).max())
    if peak > 0.9:
        speech *= 0.9 / peak
    return encode_wav(speech[None], rate)
