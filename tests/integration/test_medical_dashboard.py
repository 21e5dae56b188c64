"""The medical page in real Streamlit: AppTest for content and privacy, then a real `streamlit run` server with a
password, driven by Chromium. The audit store holds real DICOM series, FHIR Bundles and a faiss index
(tests/unit/test_medical_dashboard_data.py builds it)."""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright
from streamlit.testing.v1 import AppTest

from tests.integration.test_dashboard import APP, CHROMIUM, CHROMIUM_ARGS, MAIN_HAS_JS, streamlit_server
from tests.unit.test_medical_dashboard_data import PHI, MedicalFixture, build_medical_audit, expected_similar

pytestmark = pytest.mark.integration

PASSWORD_ENV, PASSWORD = "FUSIONLINE_TEST_PASSWORD", "lung-Ω-42"


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> MedicalFixture:
    return build_medical_audit(tmp_path_factory.mktemp("medical-dashboard"))


def dashboard(db: Path, monkeypatch: pytest.MonkeyPatch, password: bool) -> AppTest:
    """The dashboard app over ``db``, with ``--password-env`` (and the password typed) when ``password``."""
    monkeypatch.setenv("FUSIONLINE_AUDIT_DB", str(db))
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setattr(sys, "argv", ["dashboard.py", *(["--password-env", PASSWORD_ENV] if password else [])])
    at = AppTest.from_file(APP, default_timeout=30).run()
    if password:
        at.text_input[0].input(PASSWORD).run()
    return open_medical_page(at)


def open_medical_page(at: AppTest) -> AppTest:
    """AppTest.switch_page finds file pages only; the dashboard's pages are callables, registered by url path."""
    [page_hash] = [h for h, page in at._registered_pages.items() if page.get("url_pathname") == "medical"]
    at._page_hash = page_hash
    return at.run()


def page_text(at: AppTest) -> str:
    return "\n".join([str(e.value) for kind in ("markdown", "caption", "info", "warning") for e in at.get(kind)]
                     + [e.value.to_string() for e in at.dataframe])


def test_apptest_without_password_shows_findings_but_no_patient_data(fx: MedicalFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    at = dashboard(fx.db, monkeypatch, password=False)
    assert not at.exception
    assert at.title[0].value == "Lung-nodule decision support"
    assert "Decision support for a radiologist, not a diagnosis" in at.info[0].value
    metrics = {m.label: m.value for m in at.metric}
    latency = statistics.median(d.latency_ms for d in fx.decisions)
    assert {k: metrics[k] for k in ("Studies", "Nodules found", "Flagged for review", "Quarantined",
                                    "Latency p50")} == {
        "Studies": str(len(fx.decisions)), "Nodules found": str(sum(s.nodule is not None for s in fx.studies)),
        "Flagged for review": str(sum(s.flagged for s in fx.studies)), "Quarantined": str(len(fx.quarantined)),
        "Latency p50": f"{latency:,.0f} ms"}
    studies = at.dataframe[0].value
    flagged_first = sorted(fx.studies, key=lambda s: not s.flagged)
    assert list(studies["item_id"]) == [s.item_id for s in flagged_first]
    assert list(studies["probability"]) == pytest.approx([100 * s.probability for s in flagged_first])
    selected = flagged_first[0]  # the first flagged study is selected
    assert at.selectbox[1].value == selected.item_id
    assert (metrics["Nodule probability"], metrics["Diameter"], metrics["Malignancy risk"],
            metrics["Centre (slice, row, col)"]) == (
        f"{100 * selected.probability:.0f} %", f"{selected.diameter_mm:.1f} mm",
        f"{100 * selected.malignancy_risk:.0f} %", "{}, {}, {}".format(*selected.nodule))
    assert len(at.get("vega_lite_chart")) == 1  # the modality weights
    similar = at.dataframe[1].value
    assert list(similar["item_id"]) == [i for i, _ in expected_similar(fx, selected.item_id)]
    assert list(at.dataframe[2].value["item_id"]) == [q.item_id for q in fx.quarantined]
    # patient data hidden: no slice, no scroller, no record summary; the note says how to unlock
    assert not at.image and not at.slider
    text = page_text(at)
    assert "fusionline dashboard --password-env VAR" in text and "Age:" not in text
    assert not any(phi in text for phi in PHI)


def test_apptest_with_password_shows_slices_and_record(fx: MedicalFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    at = dashboard(fx.db, monkeypatch, password=True)
    assert not at.exception and not at.text_input
    [image] = at.image
    [slider] = at.slider
    selected = next(s for s in fx.studies if s.flagged)
    assert slider.value == selected.nodule[0] and (slider.min, slider.max) == (0, 11)  # opens on the finding
    assert "Slice 5 of 12" in image.proto.imgs[0].caption and "finding on slices 3–7" in image.proto.imgs[0].caption
    text = page_text(at)
    assert "- **Age:** 62 years" in text and "- **Smoking:** former smoker" in text
    assert "- **Conditions:** COPD, known lung nodule" in text and "password-env VAR" not in text
    assert not any(phi in text for phi in PHI)
    first_url = image.proto.imgs[0].url
    at.slider[0].set_value(9).run()
    assert not at.exception and "Slice 9 of 12" in at.image[0].proto.imgs[0].caption
    assert at.image[0].proto.imgs[0].url != first_url
    at.selectbox[1].select("case-8c1f").run()  # no nodule; its CT folder is relative to the recording
    assert not at.exception and at.slider[0].value == 6 and "no finding drawn" in at.image[0].proto.imgs[0].caption
    assert "- **Sex:** male" in page_text(at)
    assert list(at.dataframe[1].value["item_id"]) == [i for i, _ in expected_similar(fx, "case-8c1f")]


def test_apptest_moved_recording_and_index_give_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fx = build_medical_audit(tmp_path)
    shutil.rmtree(fx.recording / "ct" / "case-2a7e")
    (fx.recording / "records" / "case-2a7e.json").unlink()
    shutil.rmtree(fx.index_dir)
    at = dashboard(fx.db, monkeypatch, password=True)
    assert not at.exception and not at.image
    warnings = " ".join(w.value for w in at.warning)
    assert "The CT series is gone" in warnings and "The similar-cases index is gone" in warnings
    assert "The record is gone" in page_text(at)
    assert {m.label: m.value for m in at.metric}["Diameter"] == "18.0 mm"  # the finding still shows
    (fx.recording / "ct" / "case-5d03" / "0003.dcm").write_bytes(b"not DICOM")
    at.selectbox[1].select("case-5d03").run()
    assert not at.exception
    assert "The CT series cannot be read:** case-5d03: 0003.dcm: not a DICOM file" in at.warning[0].value


def test_browser_types_the_password_and_shows_the_slice(fx: MedicalFixture, tmp_path: Path) -> None:
    shot = tmp_path / "medical.png"
    with streamlit_server(fx.db, tmp_path / "streamlit.log", "--password-env", PASSWORD_ENV,
                          env={PASSWORD_ENV: PASSWORD}) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=30_000)
            field = page.get_by_label("Password", exact=True)
            field.fill(PASSWORD)
            field.press("Enter")
            page.locator('[data-testid="stSidebarNavLink"]', has_text="Lung-nodule support").click(timeout=30_000)
            page.wait_for_function(MAIN_HAS_JS, arg=["Lung-nodule decision support", "Similar cases", "62 years"],
                                   timeout=30_000)
            page.wait_for_function(  # rendered: no skeletons, the chart drawn, the slice loaded
                """() => { const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
                   return !document.querySelector('[data-testid="stSkeleton"]')
                     && document.querySelector('[data-testid="stVegaLiteChart"] canvas, '
                                               + '[data-testid="stVegaLiteChart"] svg.marks')
                     && imgs.length === 1 && imgs[0].complete && imgs[0].naturalWidth > 0; }""",
                timeout=30_000,
            )
            height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            page.set_viewport_size({"width": 1500, "height": min(int(height) + 40, 4000)})
            page.wait_for_timeout(700)  # charts re-layout to the new viewport
            page.screenshot(path=str(shot), full_page=True)
            box = page.locator('[data-testid="stImage"] img').bounding_box()
            text = page.inner_text('[data-testid="stMain"]')
        finally:
            browser.close()
    shutil.copy(shot, "/tmp/medical-page.png")
    assert "Slice 5 of 12" in text and "case-2a7e" in text and not any(phi in text for phi in PHI)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.mean(axis=2).std() > 10  # a page, not a blank one
    x, y, w, h = (round(v) for v in (box["x"], box["y"], box["width"], box["height"]))
    assert w > 300 and h > 300
    slice_region = pixels[y:y + h, x:x + w]
    assert slice_region.mean(axis=2).std() > 40  # the CT: dark lungs and air, bright body
    r, g, b = slice_region[..., 0], slice_region[..., 1], slice_region[..., 2]
    assert ((r - b > 120) & (g - b > 60)).sum() > 50  # the finding's circle
