"""Saving and loading models, one way for all of them: a folder with ``model.safetensors`` and ``config.json``.

``config.json`` holds the model's ``model_type``, its configuration and the SHA-256 of the weights file;
``from_pretrained`` refuses weights that do not match that digest and a folder saved for another model type.
Reading ``config.json`` needs no torch (the dashboard reads model configurations too).

Example:
    >>> model.save_pretrained("runs/model")                  # any PretrainedModel
    >>> model_type("runs/model")
    'factory-inspector'
    >>> same = type(model).from_pretrained("runs/model")     # eval mode
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, TypeVar

if TYPE_CHECKING:
    import torch

_Config = TypeVar("_Config")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ModelConfig(Protocol):
    """What a model's configuration offers for ``config.json``."""

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self: ...


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file (the weights' identity, checked by ``from_pretrained``)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataclass_from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
    """``cls(**data)`` without the keys dataclass ``cls`` does not define (``config.json`` also holds the model
    type, the weights' digest and extra keys; a newer version may add fields)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def read_config(directory: str | Path) -> dict[str, Any]:
    """``directory/config.json`` as a dict; FileNotFoundError when it is not a ``save_pretrained`` folder."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG_NAME} (not a save_pretrained folder)")
    return json.loads(path.read_text())


def model_type(directory: str | Path) -> str:
    """The ``model_type`` of a ``save_pretrained`` folder; ValueError for a folder saved before models had one."""
    found = read_config(directory).get("model_type")
    if found is None:
        raise ValueError(f"{directory}/{CONFIG_NAME} has no model_type (saved before models had one)")
    return found


class SavedConfig:
    """``from_dict`` and ``load`` for a dataclass configuration saved in ``config.json`` (a mixin; the dataclass
    brings its fields and ``to_dict``)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a dict; unknown keys (``model_type``, the weights' digest, newer fields) are ignored."""
        return dataclass_from_dict(cls, data)

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """The configuration saved in a ``save_pretrained`` folder."""
        return cls.from_dict(read_config(directory))


class PretrainedModel:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` built from one configuration object.

    A subclass sets :attr:`model_type` (written to ``config.json``) and :attr:`config_class`, keeps its
    configuration in ``self.config`` and is built by ``cls(config)``. A fused inference copy (``_fused``) cannot
    be saved.
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    config: ModelConfig
    _fused: bool = False

    def save_pretrained(self, directory: str | Path, **extra: Any) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (model type, configuration, ``extra`` keys such as a
        chosen threshold, and the weights' SHA-256) into ``directory``; returns it."""
        from safetensors.torch import save_file

        if self._fused:
            raise RuntimeError("a fused inference copy cannot be saved; save the original model")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        weights = directory / WEIGHTS_NAME
        save_file(state, str(weights), metadata={"format": "pt", "model_type": self.model_type})
        meta = {"model_type": self.model_type, **self.config.to_dict(), **extra,
                "weights_sha256": file_sha256(weights)}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Self:
        """Load a :meth:`save_pretrained` folder, in eval mode.

        A ``config.json`` without ``model_type`` (written before the field existed) is taken as this class's.

        Raises:
            FileNotFoundError: ``config.json`` or the weights are missing.
            ValueError: the folder holds another model type, or the weights do not match their SHA-256.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = read_config(directory)
        found = meta.get("model_type", cls.model_type)
        if found != cls.model_type:
            raise ValueError(f"{directory} holds a {found!r} model, not a {cls.model_type!r}")
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME}")
        if meta.get("weights_sha256") and meta["weights_sha256"] != file_sha256(weights):
            raise ValueError(f"{weights}: SHA-256 does not match {CONFIG_NAME} (corrupt or mixed-up files)")
        model = cls(cls.config_class.from_dict(meta))  # type: ignore[call-arg]
        model.load_state_dict(load_file(str(weights), device=str(map_location)), strict=True)  # type: ignore[attr-defined]
        return model.to(map_location).eval()  # type: ignore[attr-defined]
