"""The service desk's knowledge base: repair guides kept as Markdown in the repository, searched by meaning.

Each guide is one file ``knowledge/<device>.<fault>.md``: YAML front matter naming the ``device`` and its spoken
``device_name``, the ``fault`` (one of :data:`FAULTS`) and its ``fault_name``, the ``title``, the ``hazards`` (a
subset of :data:`HAZARDS`), the ``symptoms`` a customer mentions and the complaint ``phrases`` a customer might say;
then the guide in Markdown, whose numbered list under ``## Steps`` holds the repair steps.

Search embeds every guide several times with the MiniLM sentence model (:mod:`model.text`): its title, its symptoms
and each complaint phrase, one vector each, in a faiss inner-product index over L2-normalised vectors (cosine
similarity). A guide scores the best similarity of any of its vectors to the query. The index is built from the
Markdown when the base is loaded, so it always matches the files it came from (about 200 short texts: a few
seconds on CPU).

Example:
    >>> base = KnowledgeBase.load()
    >>> guide, score = base.search("the plug of my kettle has melted", k=1)[0]
    >>> guide.device, guide.fault
    ('kettle', 'burnt_connector')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The fault categories a guide can name (the service line's classes, ``no_fault`` aside).
FAULTS = ("burnt_connector", "cracked_casing", "leaking_seal", "corroded_contact")
#: The hazards a guide can carry; each one means the answer needs a lockout/tagout warning or a human.
HAZARDS = ("mains", "gas", "pressure", "battery")
#: Where the shipped guides live.
DEFAULT_FOLDER = Path(__file__).with_name("knowledge")

_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n(.*)\Z", re.S)
_STEP = re.compile(r"^(\d+)\.\s+(.*)$")
_REQUIRED = ("device", "device_name", "fault", "fault_name", "title", "hazards", "symptoms", "phrases")


class GuideError(ValueError):
    """A guide file that cannot be read, naming the file and the reason."""


@dataclass(frozen=True)
class Guide:
    """One repair guide: the device and fault it covers, its hazards and its numbered steps (in order)."""

    device: str
    fault: str
    title: str
    hazards: frozenset[str]
    steps: tuple[str, ...]
    path: Path
    device_name: str = ""
    fault_name: str = ""
    symptoms: tuple[str, ...] = ()
    phrases: tuple[str, ...] = field(default=(), repr=False)

    @property
    def key(self) -> str:
        """``<device>.<fault>``, the guide's id (and its file's stem)."""
        return f"{self.device}.{self.fault}"

    def answer(self) -> str:
        """The guide as an answer to a customer: the title, then the steps numbered from 1."""
        return "\n".join([self.title, *(f"{k}. {step}" for k, step in enumerate(self.steps, 1))])


def parse_guide(path: str | Path) -> Guide:
    """Read one guide file; :class:`GuideError` naming the file and what is wrong with it."""
    import yaml

    path = Path(path)
    match = _FRONT_MATTER.match(path.read_text(encoding="utf-8"))
    if not match:
        raise GuideError(f"{path}: no YAML front matter between '---' lines at the top")
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        raise GuideError(f"{path}: front matter is not valid YAML ({error})") from error
    if not isinstance(meta, dict):
        raise GuideError(f"{path}: front matter is not a mapping")
    missing = [name for name in _REQUIRED if not meta.get(name)]
    if missing:
        raise GuideError(f"{path}: front matter lacks {', '.join(missing)}")
    if meta["fault"] not in FAULTS:
        raise GuideError(f"{path}: fault {meta['fault']!r} is not one of {', '.join(FAULTS)}")
    hazards = frozenset(meta["hazards"])
    if unknown := sorted(hazards - set(HAZARDS)):
        raise GuideError(f"{path}: unknown hazards {unknown} (known: {', '.join(HAZARDS)})")
    steps = _steps(match.group(2), path)
    if not steps:
        raise GuideError(f"{path}: no numbered steps under a '## Steps' heading")
    if path.stem != f"{meta['device']}.{meta['fault']}":
        raise GuideError(f"{path}: the file should be named {meta['device']}.{meta['fault']}.md")
    return Guide(device=meta["device"], fault=meta["fault"], title=str(meta["title"]), hazards=hazards,
                 steps=steps, path=path, device_name=str(meta["device_name"]), fault_name=str(meta["fault_name"]),
                 symptoms=tuple(map(str, meta["symptoms"])), phrases=tuple(map(str, meta["phrases"])))


def _steps(body: str, path: Path) -> tuple[str, ...]:
    """The numbered list under ``## Steps`` (continuation lines joined), which must count 1, 2, 3, ..."""
    steps: list[str] = []
    inside = False
    for line in body.splitlines():
        if line.startswith("#"):
            inside = line.strip().lower() == "## steps"
            continue
        if not inside or not line.strip():
            continue
        numbered = _STEP.match(line)
        if numbered:
            if int(numbered.group(1)) != len(steps) + 1:
                raise GuideError(f"{path}: step {numbered.group(1)} follows step {len(steps)}")
            steps.append(numbered.group(2).strip())
        elif steps:
            steps[-1] += " " + line.strip()
    return tuple(steps)


class KnowledgeBase:
    """The guides of a folder with a faiss index of their titles, symptoms and complaint phrases."""

    def __init__(self, guides: Sequence[Guide]):
        import faiss

        from model.text import NOTE_DIM, embed_notes

        keys = [guide.key for guide in guides]
        if duplicates := sorted({key for key in keys if keys.count(key) > 1}):
            raise GuideError(f"more than one guide for {', '.join(duplicates)}")
        self.guides = list(guides)
        texts, owners = [], []
        for row, guide in enumerate(self.guides):
            for text in (guide.title, ", ".join(guide.symptoms), *guide.phrases):
                texts.append(text)
                owners.append(row)
        self._owner = np.asarray(owners, np.int64)  # (V,) guide row of each vector
        self.index = faiss.IndexFlatIP(NOTE_DIM)
        self.index.add(embed_notes(texts))

    @classmethod
    def load(cls, folder: str | Path = DEFAULT_FOLDER) -> KnowledgeBase:
        """Every ``*.md`` guide of ``folder``; :class:`GuideError` naming the first bad file, FileNotFoundError when
        the folder holds none."""
        paths = sorted(Path(folder).glob("*.md"))
        if not paths:
            raise FileNotFoundError(f"{folder}: no repair guides (*.md) there")
        return cls([parse_guide(path) for path in paths])

    def __len__(self) -> int:
        return len(self.guides)

    def guide(self, device: str, fault: str) -> Guide:
        """The guide for ``device`` and ``fault``; KeyError naming both when the base has none."""
        for guide in self.guides:
            if guide.device == device and guide.fault == fault:
                return guide
        raise KeyError(f"no repair guide for device {device!r} and fault {fault!r}")

    def search(self, text: str, k: int = 3, fault: str | None = None,
               device: str | None = None) -> list[tuple[Guide, float]]:
        """The ``k`` guides closest in meaning to ``text``, best first, each with its cosine similarity (the best of
        its vectors); ``fault`` and ``device`` keep only the guides that match them."""
        from model.text import embed_notes

        allowed = [(fault is None or g.fault == fault) and (device is None or g.device == device)
                   for g in self.guides]
        if not text.strip() or not any(allowed):
            return []
        scores, rows = self.index.search(embed_notes([text]), self.index.ntotal)
        best: dict[int, float] = {}
        for score, row in zip(scores[0], rows[0]):  # descending: the first hit of a guide is its best
            owner = int(self._owner[row])
            if row >= 0 and allowed[owner] and owner not in best:
                best[owner] = float(score)
        return [(self.guides[owner], score) for owner, score in list(best.items())[:k]]

    def devices(self) -> list[str]:
        """The device ids the guides cover, sorted."""
        return sorted({guide.device for guide in self.guides})

    def vocabulary(self) -> list[str]:
        """The terms speech recognition should know, lowercase and sorted: spoken device names, fault names and
        symptom words (some several words long)."""
        terms = {term for guide in self.guides for term in (guide.device_name, guide.fault_name, *guide.symptoms)}
        return sorted(term.lower() for term in terms)

    def phrases(self) -> list[str]:
        """The complaint phrasings of every guide, lowercase, in guide order, each once."""
        return list(dict.fromkeys(phrase.lower() for guide in self.guides for phrase in guide.phrases))

    def sentences(self) -> list[str]:
        """The guides' own words, for speech recognition's word statistics: every title and step split at
        sentence and clause marks (. ; : ! ?), lowercase, in guide order, each once."""
        parts = (part.strip().lower() for guide in self.guides for text in (guide.title, *guide.steps)
                 for part in re.split(r"[.;:!?]", text))
        return list(dict.fromkeys(part for part in parts if part))
