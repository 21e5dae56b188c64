"""The factory cascade: a folder built on validation data, loaded by the handler as one model, deciding with the
small model where it is sure and escalating the rest to the big one on the same decoded inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.recording import Replayer
from connectors.records import Sample
from model.config import InspectorConfig
from model.factory_model import FactoryInspector
from model.lab.distill import student_config
from pipelines import lines
from pipelines.lines.factory.cascade import build_cascade
from pipelines.lines.factory.handler import FactoryHandler
from pipelines.replicas import ModelReplica

ROOT = Path(__file__).resolve().parents[2]
BIG = ROOT / "tests" / "data" / "models" / "factory-v2"
MINI = ROOT / "tests" / "data" / "recordings" / "factory-mini"


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [s for s in Replayer(MINI) if isinstance(s, Sample)]


def test_a_small_model_as_good_as_the_big_one_decides_everything(tmp_path: Path, samples) -> None:
    measured = build_cascade(BIG, BIG, MINI, tmp_path / "cascade", max_drop=0.0)
    assert measured["decided_share"] == 1.0 and measured["accuracy"] == measured["big_accuracy"]
    spec = json.loads((tmp_path / "cascade" / "config.json").read_text())
    assert spec["model_type"] == "factory-cascade" and (tmp_path / "cascade" / spec["big"]).resolve() == BIG
    cascade = FactoryHandler.from_pretrained(tmp_path / "cascade")
    alone = FactoryHandler.from_pretrained(BIG)
    answers = cascade.infer(samples)
    assert {a.extra["cascade"] for a in answers} == {"small"}
    assert [a.label for a in answers] == [a.label for a in alone.infer(samples)]


def test_an_untrained_small_model_escalates_to_the_big_one(tmp_path: Path, samples) -> None:
    FactoryInspector(student_config(InspectorConfig.load(BIG))).save_pretrained(tmp_path / "small")
    measured = build_cascade(tmp_path / "small", BIG, MINI, tmp_path / "cascade", max_drop=0.0)
    assert measured["accuracy"] >= measured["big_accuracy"]
    cascade = FactoryHandler.from_pretrained(tmp_path / "cascade")
    answers = cascade.infer(samples)
    escalated = [a for a in answers if a.extra["cascade"] == "escalated"]
    assert len(escalated) >= (1 - measured["decided_share"]) * len(answers) - 2
    big = {s.item_id: a for s, a in zip(samples, FactoryHandler.from_pretrained(BIG).infer(samples), strict=True)}
    for sample, answer in zip(samples, answers, strict=True):
        if answer.extra["cascade"] == "escalated":
            assert (answer.label, answer.model_version) == (big[sample.item_id].label, big[sample.item_id].model_version)
        assert answer.extra["small_confidence"] <= 1.0


def test_a_replica_hosts_a_cascade_folder_as_the_factory_lines_model(tmp_path: Path, samples) -> None:
    build_cascade(BIG, BIG, MINI, tmp_path / "cascade")
    assert lines.serving(tmp_path / "cascade") == "factory"
    replica = ModelReplica(str(tmp_path / "cascade"))
    assert "@" in replica.info()["model_version"]
    assert all(o.prediction.extra["cascade"] == "small" for o in replica.infer(samples[:4]))


def test_models_that_answer_different_classes_make_no_cascade(tmp_path: Path) -> None:
    config = InspectorConfig.load(BIG)
    config.classes = {**config.classes, "defect": ["good", "bad"]}
    FactoryInspector(config).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="different classes"):
        build_cascade(tmp_path / "other", BIG, MINI, tmp_path / "cascade")


def test_the_shipped_cascade_lets_the_low_resolution_model_decide_where_it_is_sure_and_factory_v5_the_rest(
        samples) -> None:
    shipped = ROOT / "tests" / "data" / "models" / "factory-v5-cascade"
    spec = json.loads((shipped / "config.json").read_text())
    small_dir, big_dir = (shipped / spec["small"]).resolve(), (shipped / spec["big"]).resolve()
    assert big_dir == ROOT / "tests" / "data" / "models" / "factory-v5"  # the line's model before factory-v6
    # the same network fine-tuned on frames of a quarter of the pixels: each model resizes the same decoded frame
    assert InspectorConfig.load(small_dir).image_size == (96, 128)
    assert InspectorConfig.load(big_dir).image_size == (192, 256)
    cascade = FactoryHandler.from_pretrained(shipped)
    big = {s.item_id: a for s, a in zip(samples, FactoryHandler.from_pretrained(big_dir).infer(samples), strict=True)}
    small = {s.item_id: a for s, a in zip(samples, FactoryHandler.from_pretrained(small_dir).infer(samples),
                                          strict=True)}
    for sample, answer in zip(samples, cascade.infer(samples), strict=True):
        sure = answer.extra["small_confidence"] >= spec["threshold"]
        assert answer.extra["cascade"] == ("small" if sure else "escalated")
        expected = small[sample.item_id] if sure else big[sample.item_id]
        assert (answer.label, answer.model_version) == (expected.label, expected.model_version)
