"""The command line: every subcommand and every flag is documented; errors are clear."""

from __future__ import annotations

import argparse

import pytest

from pipelines.cli import build_parser, main


def _all_parsers(parser: argparse.ArgumentParser, path: str = "fusionline"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{path} {name}")


def test_every_flag_has_help() -> None:
    seen = 0
    for path, parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help and len(action.help) > 8, f"{path} {action.option_strings} has no help"
                seen += 1
    assert seen > 30


@pytest.mark.parametrize("argv", [["--help"], ["run", "factory", "--help"], ["demo", "--help"], ["plc-sim", "--help"],
                                  *([verb, "factory", "--help"] for verb in ("synth", "train", "eval", "fit", "demo"))])
def test_help_exits_cleanly(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: fusionline" in capsys.readouterr().out


def test_missing_model_is_a_clear_error(tmp_path, capsys: pytest.CaptureFixture) -> None:
    code = main(["run", "factory", "--recording", str(tmp_path), "--model", str(tmp_path / "nope")])
    assert code == 2
    assert "model folder" in capsys.readouterr().err


def test_dashboard_password_variable_must_be_set(monkeypatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("FUSIONLINE_UNSET_PASSWORD", raising=False)
    assert main(["dashboard", "--password-env", "FUSIONLINE_UNSET_PASSWORD"]) == 2
    assert "FUSIONLINE_UNSET_PASSWORD" in capsys.readouterr().err


@pytest.mark.parametrize("flags, named", [
    (["--image-size", "200", "300"], "--image-size 200 300"),
    (["--style-randomisation", "1.5"], "--style-randomisation 1.5"),
    (["--synthetic-defects", "-0.1"], "--synthetic-defects -0.1"),
])
def test_train_factory_refuses_a_bad_frame_size_or_share_before_loading(tmp_path, capsys, flags, named) -> None:
    assert main(["train", "factory", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m"), *flags]) == 2
    assert named in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_fit_factory_saves_an_anomaly_model_from_the_good_parts_only(tmp_path, capsys: pytest.CaptureFixture) -> None:
    import cv2

    from model.anomaly import PatchMemory
    from model.pretrained import read_config
    from pipelines.lines.factory.synth import synth_factory

    normal = synth_factory(tmp_path / "product", 20, seed=1, size=(160, 120), progress=False, product=2)  # 8 good
    out = tmp_path / "fit"
    assert not main(["fit", "factory", "--normal", str(normal), "--out", str(out), "--coreset", "64"])
    assert "saved to" in capsys.readouterr().out
    assert read_config(out)["good_parts"] == 8
    assert PatchMemory.from_pretrained(out).bank.shape == (64, 24)
    sheet = cv2.imread(str(out / "heatmaps.jpg"))  # the 12 parts not fitted on, most anomalous first, 4 a row
    assert sheet is not None and sheet.shape == (3 * 240, 4 * 320, 3)


def test_eval_with_only_a_recording_scores_its_lines_shipped_model(tmp_path, capsys: pytest.CaptureFixture) -> None:
    import json
    from pathlib import Path

    mini = Path(__file__).resolve().parents[1] / "data" / "recordings" / "factory-mini"
    assert not main(["eval", "--data", str(mini), "--out", str(tmp_path)])
    assert "line 'factory', shipped model" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model_dir"].endswith("factory-v7") and 0.5 < metrics["tasks"]["defect"]["macro_auroc"] <= 1.0


def test_eval_without_line_or_recording_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["eval"]) == 2
    assert "name a LINE" in capsys.readouterr().err


def test_run_with_progress_checks_inputs_runs_the_line_then_shuts_its_replicas(monkeypatch, tmp_path) -> None:
    import pipelines.line
    import pipelines.runtime
    from pipelines.cli import run_with_progress

    events: list = []
    monkeypatch.setattr(pipelines.runtime, "connect_ray", lambda address: events.append(("ray", address)))
    monkeypatch.setattr(pipelines.line, "run_line", lambda line, progress: progress(len(line.source)) or "report")
    line = argparse.Namespace(source=[1, 2, 3], replicas=argparse.Namespace(shutdown=lambda: events.append("down")))
    inputs = {"model folder": None, "recording": str(tmp_path)}
    assert run_with_progress("test", lambda cfg: line, None, "auto", "item", inputs) == "report"
    assert events == [("ray", "auto"), "down"]
    with pytest.raises(FileNotFoundError, match=r"recording .*nope does not exist"):
        run_with_progress("test", lambda cfg: line, None, None, "item", {"recording": str(tmp_path / "nope")})
    assert events == [("ray", "auto"), "down"]  # nothing joined or run for a missing input


def test_format_summary_pads_keys_between_rules() -> None:
    from pipelines.cli import format_summary

    assert format_summary([("run id", "r1"), ("throughput", "3 parts/s")], rule_beyond_keys=2).splitlines() == [
        "─" * 12, "run id      r1", "throughput  3 parts/s", "─" * 12]
