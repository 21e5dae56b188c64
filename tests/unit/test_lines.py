"""Lines are plug-ins: the registry, each line's Handler and verbs, and a generic runtime that names no line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from connectors.records import AudioClip, Frame, Note, Quarantined, Sample, encode_png, encode_wav
from connectors.uploads import PARTS
from model.config import DEFAULT_CLASSES, MODALITIES
from pipelines import lines
from pipelines.cli import LINE_VERBS, main
from pipelines.handler import Handler

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "data" / "models" / "factory-v2"
GENERIC_RUNTIME = ["pipelines/runtime.py", "pipelines/replicas.py", "pipelines/line.py", "pipelines/handler.py",
                   "pipelines/serve.py"]


@pytest.mark.parametrize("name", lines.line_names())
def test_every_line_provides_a_handler_and_verbs(name: str) -> None:
    handler = lines.handler_class(name)
    assert handler.model_type
    assert handler.payloads and set(handler.payloads) <= set(PARTS), handler.payloads  # what an upload can carry
    for member in ("from_pretrained", "warm_up", "infer", "provenance"):
        assert callable(getattr(handler, member)), f"{name}'s Handler has no {member}"
    commands = lines.commands(name)
    assert commands and set(commands) <= set(LINE_VERBS), sorted(commands)


def test_an_unknown_line_is_refused_with_the_registered_lines(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(lines.UnknownLine, match="unknown line 'bakery'; registered lines: factory"):
        lines.handler_class("bakery")
    with pytest.raises(SystemExit) as exc:
        main(["run", "bakery"])
    assert exc.value.code == 2
    assert "'bakery'" in (err := capsys.readouterr().err) and all(n in err for n in lines.line_names())


def test_a_model_folder_says_which_line_serves_it(tmp_path: Path) -> None:
    assert lines.serving(MODEL) == "factory"
    (tmp_path / "config.json").write_text('{"model_type": "toaster"}')
    with pytest.raises(ValueError, match="no registered line serves model type 'toaster'"):
        lines.serving(tmp_path)
    (tmp_path / "config.json").write_text('{"version": "saved before model types"}')
    with pytest.raises(ValueError, match="has no model_type .*: name the line that serves it"):
        lines.serving(tmp_path)


def test_the_factory_handler_answers_or_quarantines_each_sample_in_order() -> None:
    import numpy as np

    handler: Handler = lines.handler_class("factory").from_pretrained(MODEL)
    handler.warm_up()
    rng = np.random.default_rng(0)
    wav = encode_wav(rng.uniform(-0.5, 0.5, (1, 16000)).astype(np.float32), 16000)
    good = Sample("a", 0, 0.0, frame=Frame("a", 0, encoded=encode_png(rng.integers(0, 255, (48, 64, 3), np.uint8)),
                                           source="frames/a.png"), audio=AudioClip("a", 0, encoded=wav))
    broken = Sample("b", 1, 0.0, frame=Frame("b", 0, encoded=b"\x89PNG garbage", source="frames/b.png"))
    heard = Sample("c", 2, 0.0, audio=AudioClip("c", 0, encoded=wav, source="audio/c.wav"))
    noted = Sample("d", 3, 0.0, note=Note("d", 0, "operator: looks fine"))  # used to fail the whole batch
    answers = handler.infer([good, broken, heard, noted])
    assert isinstance(answers[1], Quarantined) and answers[1].stage == "decode"
    assert answers[1].payload_paths == ["frames/b.png"]
    assert isinstance(answers[3], Quarantined) and answers[3].reason == (
        "no frame and no sound: nothing the factory inspector reads")
    assert [a.model_version for a in (answers[0], answers[2])] == [handler.model_version] * 2
    assert [handler.provenance(s) for s in (good, broken, heard)] == [
        {"image_path": "frames/a.png"}, {"image_path": "frames/b.png"}, {}]


def code_words(path: Path) -> set[str]:
    """The lower-case words of a module's own code: its identifiers and string constants (docstrings, comments and
    keyword-argument names left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            text = node.name
        elif isinstance(node, ast.keyword):  # the callee's vocabulary (``field(default_factory=...)``), not ours
            continue
        else:
            text = getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "arg", None) or ""
        words |= set(re.findall(r"[a-z]+", str(text).lower()))
    return words


@pytest.mark.parametrize("module", GENERIC_RUNTIME)
def test_the_generic_runtime_names_no_line_modality_or_task(module: str) -> None:
    named = {*lines.line_names(), *MODALITIES, *DEFAULT_CLASSES, "frame", "ct"}  # tasks; Sample's payload fields
    assert not code_words(ROOT / module) & named, f"{module} names {sorted(code_words(ROOT / module) & named)}"
