"""Fitting the recogniser to a line's voices: MAP adaptation of pocketsphinx's acoustic model.

pocketsphinx's US English acoustic model was trained on people; the service desk's voice messages come through
another channel (here Debian's ``espeak-ng``, in a real desk a phone line and its callers). CMU Sphinx's answer is
adaptation: align transcribed recordings of the channel with the model (Baum-Welch counts, ``bw``), then move every
Gaussian and mixture weight towards what the channel's speech shows, as far as its counts warrant (maximum a
posteriori, ``map_adapt``). :func:`adapt` does this with Debian's sphinxtrain and sphinxbase tools on
``(wave, rate, words)`` utterances; the folder it writes holds the adapted ``means``, ``variances``, ``sendump``
(mixture weights) and ``transition_matrices`` (3.6 MB) and :func:`decoder_files` points a decoder at them (the
model definition, dictionary and the rest stay the wheel's).

Only the domain search uses the adapted model (:class:`~pipelines.lines.service.speech.Recognizer`): the general
language model's search, the fallback for free speech, keeps the stock model, because adapting to one channel costs
others (real read speech decoded by the adapted model loses a good share of its words: ``benchmarks/asr.py``).

Tools (Debian packages, ``make system-deps``): ``sphinx_fe`` (``sphinxbase-utils``), ``bw``, ``map_adapt`` and
``mk_s2sendump`` (``sphinxtrain``), ``pocketsphinx_mdef_convert`` (``pocketsphinx``). They are needed to adapt,
never to recognise.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("fusionline.service.acoustic")

#: The files adaptation changes; the rest of a model comes from the wheel's stock model.
ADAPTED_FILES = {"means": "mean", "variances": "var", "sendump": "sendump", "transition_matrices": "tmat"}
SPHINXTRAIN = Path("/usr/lib/sphinxtrain")
TOOLS = {"sphinx_fe": "sphinxbase-utils", "pocketsphinx_mdef_convert": "pocketsphinx",
         "bw": "sphinxtrain", "map_adapt": "sphinxtrain", "mk_s2sendump": "sphinxtrain"}
#: The stock model's front end and feature streams, as its ``feat.params`` states them (bw needs them spelt out).
FEATURES = ["-feat", "1s_c_d_dd", "-svspec", "0-12/13-25/26-38", "-cmn", "current", "-agc", "none"]
#: MAP's prior weight, fixed: how many frames of the stock model's own count a Gaussian's estimate is worth. Small
#: values move each Gaussian most of the way to what the line's speech shows. Chosen on complaints spoken by voices
#: in neither split (``benchmarks/asr.py --tau-sweep``; docs/service.md has its table).
MAP_TAU = 1.0


class AdaptationError(RuntimeError):
    """Adaptation could not run or failed: the missing tool and its Debian package, or the failing step's output."""


@dataclass(frozen=True)
class Adaptation:
    """What :func:`adapt` fitted on (also written to ``adaptation.json`` beside the model).

    Attributes:
        utterances: utterances the counts came from.
        skipped: utterances left out because a word of theirs is not in the dictionary (or they have none).
        audio_s: seconds of speech adapted on.
        seconds: how long adaptation took.
    """

    utterances: int
    skipped: int
    audio_s: float
    seconds: float


def stock_model() -> Path:
    """The US English acoustic model inside the pocketsphinx wheel."""
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us" / "en-us"


def dictionary() -> Path:
    """The pronunciation dictionary inside the pocketsphinx wheel."""
    return stock_model().parent / "cmudict-en-us.dict"


def decoder_files(folder: str | Path) -> dict[str, str]:
    """``pocketsphinx.Decoder`` keywords that load the adapted model in ``folder`` over the stock model;
    :class:`FileNotFoundError` naming a file the folder lacks."""
    folder = Path(folder)
    missing = [name for name in ADAPTED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not an adapted acoustic model, it lacks {', '.join(missing)}")
    return {"hmm": str(stock_model()), **{key: str(folder / name) for name, key in ADAPTED_FILES.items()}}


def adapt(utterances: Iterable[tuple[np.ndarray, int, str]], out: str | Path, tau: float | None = MAP_TAU,
          progress: bool = True) -> Adaptation:
    """MAP-adapt the stock acoustic model to ``utterances`` (``(wave (samples,) float32 mono in [-1, 1], rate Hz,
    the words spoken)``) with prior weight ``tau`` (:data:`MAP_TAU`; None: map_adapt estimates it) and write the
    adapted files into ``out``; what it fitted on.

    Utterances with a word the dictionary lacks are skipped (a transcript that leaves a spoken word out would
    teach the model wrong sounds). :class:`AdaptationError` when a tool is missing, no utterance is left, or a step
    fails.
    """
    from tqdm import tqdm

    from pipelines.lines.service.speech import decoder_input, words

    missing = [f"{tool} (Debian package {package})" for tool, package in TOOLS.items() if _tool(tool) is None]
    if missing:
        raise AdaptationError(f"adaptation needs {', '.join(missing)}: make system-deps installs them")
    started = time.perf_counter()
    known = {line.split()[0] for line in dictionary().read_text().splitlines() if line.strip()}
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="fusionline-adapt-") as tmp:
        work = Path(tmp)
        base, audio, counts = work / "base", work / "audio", work / "counts"
        for folder in (base, audio, counts):
            folder.mkdir()
        ids, lines, skipped, audio_s = [], [], 0, 0.0
        for k, (wave, rate, text) in enumerate(tqdm(utterances, desc="adaptation audio", unit="utt",
                                                       disable=not progress)):
            spoken = words(text)
            if not spoken or any(w not in known for w in spoken):
                skipped += 1
                continue
            name = f"u{k:05d}"
            (audio / f"{name}.raw").write_bytes(decoder_input(wave, rate))
            ids.append(name)
            lines.append(f"<s> {' '.join(spoken)} </s> ({name})")
            audio_s += len(wave) / rate
        if not ids:
            raise AdaptationError(f"no utterance to adapt on ({skipped} skipped: words not in the dictionary)")
        (work / "ids").write_text("\n".join(ids) + "\n")
        (work / "transcripts").write_text("\n".join(lines) + "\n")
        stock = stock_model()
        for name in ("means", "variances", "transition_matrices", "feat.params", "noisedict"):
            shutil.copy(stock / name, base / name)
        _run("pocketsphinx_mdef_convert", "-text", stock / "mdef", base / "mdef.txt")
        write_mixture_weights(base / "mixture_weights", read_sendump(stock / "sendump"))
        _run("sphinx_fe", "-argfile", base / "feat.params", "-samprate", "16000", "-c", work / "ids", "-di", audio,
             "-do", audio, "-ei", "raw", "-eo", "mfc", "-raw", "yes", "-input_endian", "little")
        model = ["-moddeffn", base / "mdef.txt", "-ts2cbfn", ".ptm."]
        _run("bw", "-hmmdir", base, *model, *FEATURES, "-dictfn", dictionary(), "-fdictfn", base / "noisedict",
             "-ctlfn", work / "ids", "-lsnfn", work / "transcripts", "-cepdir", audio, "-cepext", "mfc",
             "-accumdir", counts, "-timing", "no")
        adapted = work / "adapted"
        adapted.mkdir()
        _run("map_adapt", *model, "-meanfn", base / "means", "-varfn", base / "variances",
             "-mixwfn", base / "mixture_weights", "-tmatfn", base / "transition_matrices", "-accumdir", counts,
             "-mapmeanfn", adapted / "means", "-mapvarfn", adapted / "variances",
             "-mapmixwfn", adapted / "mixture_weights", "-maptmatfn", adapted / "transition_matrices",
             *(["-fixedtau", "yes", "-tau", tau] if tau is not None else []))
        _run("mk_s2sendump", "-pocketsphinx", "yes", "-moddeffn", base / "mdef.txt",
             "-mixwfn", adapted / "mixture_weights", "-sendumpfn", adapted / "sendump")
        out.mkdir(parents=True, exist_ok=True)
        for name in ADAPTED_FILES:
            shutil.copy(adapted / name, out / name)
    report = Adaptation(len(ids), skipped, round(audio_s, 1), round(time.perf_counter() - started, 1))
    (out / "adaptation.json").write_text(json.dumps({**asdict(report), "method": "MAP (sphinxtrain bw + map_adapt)",
                                                     "tau": tau, "stock_model": "pocketsphinx en-us (ptm)"},
                                                    indent=2) + "\n")
    return report


def adapt_to_recording(root: str | Path, out: str | Path, limit: int | None = None, tau: float | None = MAP_TAU,
                       progress: bool = True) -> Adaptation:
    """:func:`adapt` on the voice messages of the labelled service recording ``root`` (tickets' first messages,
    decoded as the line decodes them; the words from ``labels.jsonl``'s ``complaint``), the first ``limit`` of
    them (None: all). A message that does not decode is left out with a warning naming it and the reason; a
    message without spoken words in the labels (a follow-up) is left out. :class:`ValueError` when the
    recording has no spoken words in its labels or ``limit`` is not positive."""
    from connectors.recording import Replayer, read_labels
    from connectors.records import Quarantined
    from pipelines.lines.service.handler import DecodedTicket, decode

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, not {limit}")
    labels = {item: row for item, row in read_labels(root).items() if row.get("complaint")}
    if not labels:
        raise ValueError(f"{root}: no labelled voice message to adapt on (labels.jsonl with each ticket's "
                         "'complaint', the words spoken, as `fusionline synth service` writes it)")

    def utterances() -> Iterable[tuple[np.ndarray, int, str]]:
        count = 0
        for sample in Replayer(root):
            decoded = sample if isinstance(sample, Quarantined) else decode(sample)
            if isinstance(decoded, Quarantined):
                log.warning("%s: left out of the adaptation: %s", decoded.item_id, decoded.reason)
            elif isinstance(decoded, DecodedTicket) and decoded.speech is not None and decoded.item_id in labels:
                yield decoded.speech, decoded.rate, labels[decoded.item_id]["complaint"]
                count += 1
                if limit is not None and count >= limit:
                    return

    return adapt(utterances(), out, tau, progress)


def read_sendump(path: str | Path) -> np.ndarray:
    """Mixture weights ``(senones, feature streams, codewords)`` float64, each row summing to 1, from a pocketsphinx
    ``sendump`` (8-bit negated logs, base 1.0001, shifted right by ``mixw_shift``; unclustered)."""
    with open(path, "rb") as f:
        def string() -> str | None:
            size = struct.unpack("<I", f.read(4))[0]
            return f.read(size)[:-1].decode() if size else None

        string()  # the format's description
        header = {}
        while (line := string()) is not None:
            key, *value = line.split()
            header[key] = value[0] if value else ""
        if int(header.get("cluster_count", 0)) != 0:
            raise ValueError(f"{path}: clustered sendump files are not read")
        codewords, senones = struct.unpack("<II", f.read(8))
        streams, shift = int(header["feature_count"]), int(header.get("mixw_shift", 10))
        data = np.fromfile(f, np.uint8, streams * codewords * senones).reshape(streams, codewords, senones)
    weights = np.power(1.0001, -(data.astype(np.float64) * (1 << shift))).transpose(2, 0, 1)
    return weights / weights.sum(axis=-1, keepdims=True)


def write_mixture_weights(path: str | Path, weights: np.ndarray) -> None:
    """``weights (senones, streams, codewords)`` as sphinxtrain's ``mixture_weights`` (s3 format, checksummed)."""
    dims = struct.pack("<IIII", *weights.shape, weights.size)
    data = np.ascontiguousarray(weights, "<f4").tobytes()
    checksum = 0
    for word in np.frombuffer(dims + data, "<u4").tolist():  # s3io's checksum: rotate left 20, add
        checksum = ((((checksum << 20) | (checksum >> 12)) & 0xFFFFFFFF) + word) & 0xFFFFFFFF
    with open(path, "wb") as f:
        f.write(b"s3\nversion 1.0\nchksum0 yes\nendhdr\n")
        f.write(struct.pack("<I", 0x11223344))  # byte order
        f.write(dims + data + struct.pack("<I", checksum))


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and (SPHINXTRAIN / name).is_file():
        found = str(SPHINXTRAIN / name)
    return found


def _run(tool: str, *args: object) -> None:
    done = subprocess.run([_tool(tool) or tool, *map(str, args)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise AdaptationError(f"{tool} failed (exit {done.returncode}):\n{tail}")
