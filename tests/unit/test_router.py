"""The router's helpers shared by the models: what a forward pass was given."""

from __future__ import annotations

import pytest
import torch

from model.router import given_modalities

MODALITIES = ("photo", "voice", "text")


def test_given_modalities_masks_what_was_not_given() -> None:
    voice = torch.zeros(2, 4)
    given, present, ref = given_modalities({"photo": None, "voice": voice}, None, MODALITIES, "M")
    assert list(given) == ["voice"] and ref is voice
    assert present.tolist() == [[False, True, False], [False, True, False]]
    asked = torch.tensor([[1, 1, 1], [0, 1, 0]])  # a mask claiming the photo and text: neither was given
    assert given_modalities({"voice": voice}, asked, MODALITIES, "M")[1].tolist() == [[False, True, False],
                                                                                    [False, True, False]]


def test_given_modalities_names_unknown_and_missing_modalities() -> None:
    with pytest.raises(ValueError, match=r"unknown modalities \['image'\]; the model knows"):
        given_modalities({"image": torch.zeros(1, 3)}, None, MODALITIES, "M")
    with pytest.raises(ValueError, match=r"M needs at least one of \['photo', 'voice', 'text'\]"):
        given_modalities({"voice": None}, None, MODALITIES, "M")
