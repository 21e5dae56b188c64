"""The service desk's knowledge base: the shipped Markdown guides, their search by meaning (real MiniLM + faiss),
the speech vocabulary they give, and clear errors for bad guide files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipelines.lines.service.knowledge import DEFAULT_FOLDER, FAULTS, HAZARDS, GuideError, KnowledgeBase, parse_guide

DEVICES = ("kettle", "space_heater", "gas_boiler", "pressure_washer", "ebike_battery")


@pytest.fixture(scope="module")
def base() -> KnowledgeBase:
    return KnowledgeBase.load()


def test_every_device_and_fault_has_exactly_one_well_formed_guide(base) -> None:
    assert sorted(g.key for g in base.guides) == sorted(f"{d}.{f}" for d in DEVICES for f in FAULTS)
    assert base.devices() == sorted(DEVICES)
    for guide in base.guides:
        assert guide.hazards and guide.hazards <= set(HAZARDS), guide.path
        assert len(guide.steps) >= 5 and all(len(step) > 20 for step in guide.steps), guide.path
        assert len(guide.phrases) >= 5 and guide.symptoms, guide.path
        assert guide.answer().splitlines()[1] == f"1. {guide.steps[0]}"
    assert all("gas" in g.hazards for g in base.guides if g.device == "gas_boiler")
    assert all("battery" in g.hazards for g in base.guides if g.device == "ebike_battery")
    names = {(g.device, g.device_name) for g in base.guides}
    assert len(names) == len(DEVICES), f"one spoken name per device expected, got {sorted(names)}"


def test_search_finds_the_guide_for_complaints_worded_unlike_any_guide(base) -> None:
    complaints = {  # none of these is a phrase of a guide
        "the kettle plug went brown and smells hot": "kettle.burnt_connector",
        "hot water runs out of the kettle's bottom onto the worktop": "kettle.leaking_seal",
        "i knocked the heater off the table and the front panel broke": "space_heater.cracked_casing",
        "oil is coming out of the radiator heater": "space_heater.leaking_seal",
        "the boiler's pressure needle falls and there's water on the floor below it": "gas_boiler.leaking_seal",
        "the jet washer gun connection drips when i spray": "pressure_washer.leaking_seal",
        "the battery of my e-bike fell and the shell split": "ebike_battery.cracked_casing",
        "rust on the pressure washer plug prongs and it won't run": "pressure_washer.corroded_contact",
    }
    found = {text: base.search(text, k=1)[0][0].key for text in complaints}
    assert found == complaints


def test_search_ranks_best_first_and_honours_the_device_and_fault_filters(base) -> None:
    hits = base.search("my kettle smells of burning where it sits on the base", k=3)
    assert len(hits) == 3 and hits[0][0].key == "kettle.burnt_connector" and hits[0][1] == pytest.approx(1, abs=1e-3)
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)
    leaking = base.search("my kettle smells of burning", k=10, fault="leaking_seal")
    assert len(leaking) == len(DEVICES) and {g.fault for g, _ in leaking} == {"leaking_seal"}
    assert [g.key for g, _ in base.search("it is broken", k=5, device="gas_boiler", fault="cracked_casing")] == [
        "gas_boiler.cracked_casing"]
    assert base.search("   ") == [] and base.search("broken", device="toaster") == []
    assert base.guide("kettle", "leaking_seal").title.startswith("Kettle")
    with pytest.raises(KeyError, match="toaster"):
        base.guide("toaster", "leaking_seal")


def test_vocabulary_and_phrases_use_only_words_the_recogniser_knows(base) -> None:
    import pocketsphinx

    dictionary = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    known = {line.split()[0] for line in dictionary.read_text().splitlines() if line.strip()}
    vocabulary, phrases = base.vocabulary(), base.phrases()
    assert {"kettle", "gas boiler", "electric bike battery", "burnt connector", "leaking seal"} <= set(vocabulary)
    assert len(phrases) == sum(len(g.phrases) for g in base.guides) and phrases == [p.lower() for p in phrases]
    words = {word for text in vocabulary + phrases for word in re.findall(r"[a-z']+", text)}
    assert not sorted(words - known), "words the pocketsphinx dictionary lacks"


def _guide_copy(folder: Path, name: str = "kettle.leaking_seal.md") -> Path:
    folder.mkdir(exist_ok=True)
    return Path(shutil.copy(DEFAULT_FOLDER / name, folder / name))


@pytest.mark.parametrize("edit, reason", [
    (lambda text: text.replace("---\n", "", 1), "no YAML front matter"),
    (lambda text: text.replace("fault: leaking_seal", "fault: wobbly_leg"), "fault 'wobbly_leg' is not one of"),
    (lambda text: text.replace("hazards: [mains]", "hazards: [mains, lasers]"), r"unknown hazards \['lasers'\]"),
    (lambda text: text.replace("title:", "heading:"), "front matter lacks title"),
    (lambda text: text.replace("## Steps", "## Notes"), "no numbered steps"),
    (lambda text: text.replace("\n3. ", "\n4. "), "step 4 follows step 2"),
    (lambda text: text.replace("device: kettle", "device: toaster"), "should be named toaster.leaking_seal.md"),
])
def test_a_bad_guide_file_is_an_error_naming_the_file_and_the_reason(tmp_path, edit, reason) -> None:
    path = _guide_copy(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(GuideError, match=reason) as caught:
        parse_guide(path)
    assert str(path) in str(caught.value)


def test_an_empty_folder_and_two_guides_for_one_fault_are_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no repair guides"):
        KnowledgeBase.load(tmp_path)
    guide = parse_guide(_guide_copy(tmp_path))
    with pytest.raises(GuideError, match="more than one guide for kettle.leaking_seal"):
        KnowledgeBase([guide, guide])

