"""The dashboard in real Streamlit: AppTest for content, then a real `streamlit run` server driven by Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, sync_playwright
from streamlit.testing.v1 import AppTest

from connectors.audit import AuditStore
from tests.unit.test_dashboard_data import AuditFixture, build_audit_db, expected_reason

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "apps" / "dashboard.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def expected_metrics(fx: AuditFixture) -> dict[str, str]:
    """The headline metrics as the page should print them, computed from the fixture's decisions."""
    ds = fx.decisions
    ts = [d.ts for d in ds]
    cuts = statistics.quantiles([d.latency_ms for d in ds], n=100, method="inclusive")
    rejected = sum(d.reject for d in ds)
    return {
        "Parts inspected": str(len(ds)),
        "Throughput": f"{(len(ds) - 1) / (max(ts) - min(ts)):.1f} parts/s",
        "Reject rate": f"{100 * rejected / len(ds):.1f} %",
        "Latency p50": f"{cuts[49]:.1f} ms",
        "Latency p99": f"{cuts[98]:.1f} ms",
        "Quarantined": str(len(fx.quarantined)),
    }


def app_for(db: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("FUSIONLINE_AUDIT_DB", str(db))
    return AppTest.from_file(APP, default_timeout=30).run()


def test_apptest_shows_run_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fx = build_audit_db(tmp_path)
    at = app_for(fx.db, monkeypatch)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert {k: metrics[k] for k in expected_metrics(fx)} == expected_metrics(fx)
    rejected = sum(d.reject for d in fx.decisions)
    assert [m.proto.delta for m in at.metric if m.label == "Reject rate"] == [f"{rejected} rejected"]
    for sink in ("plc", "mqtt"):
        acks = [d.acks[sink] for d in fx.decisions if sink in d.acks]
        assert metrics[f"{sink.upper()} acks"] == f"{acks.count('ok')} / {len(acks)} ok"
    assert len(at.get("vega_lite_chart")) == 5  # class, throughput, latency x2, modality weights
    assert len(at.image) == 8  # the last 8 rejects: 5 annotated frames, 3 placeholders (no frame recorded)
    captions = [m.value for m in at.markdown if "confidence" in m.value]
    newest = [d for d in reversed(fx.decisions) if d.reject][:8]
    assert len(captions) == 8 and newest[0].item_id in captions[0]
    reasons = [m.value for m in at.markdown if "Rejected for" in m.value]
    assert reasons == [f":red[Rejected for {expected_reason(d)}]" for d in newest]
    assert any(" and " in r for r in reasons) and any(d.label == "good" for d in newest)  # both; machine only
    quarantine = at.dataframe[1].value
    assert list(quarantine["item_id"]) == ["part-0050", "part-0051"]
    assert "Finished" in at.markdown[0].value and fx.run_id in at.markdown[0].value


def test_apptest_run_selector_and_live_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fx = build_audit_db(tmp_path)
    store = AuditStore(fx.db)  # a newer run, still open for writing: latest by default, shown as live
    live = store.start_run("factory", {})
    try:
        at = app_for(fx.db, monkeypatch)
        assert not at.exception
        assert at.selectbox[0].value == live
        assert "Live" in at.markdown[0].value
        assert {m.label: m.value for m in at.metric}["Parts inspected"] == "0"
        assert any("No decisions recorded for this run yet" in i.value for i in at.info)
        at.selectbox[0].select(fx.run_id).run()
        assert {m.label: m.value for m in at.metric}["Parts inspected"] == "50"
    finally:
        store.close()


def test_apptest_each_line_page_lists_only_its_own_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fx = build_audit_db(tmp_path)
    store = AuditStore(fx.db)  # a newer run of another line: not the factory page's
    other = store.start_run("medical", {})
    try:
        at = app_for(fx.db, monkeypatch)
        assert not at.exception
        assert at.selectbox[0].value == fx.run_id
        assert not [o for o in at.selectbox[0].options if other in o]
    finally:
        store.close()


def test_apptest_missing_and_empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = app_for(tmp_path / "absent" / "audit.db", monkeypatch)
    assert not at.exception
    assert "No audit database" in at.info[0].value
    assert not (tmp_path / "absent").exists()
    AuditStore(tmp_path / "empty.db").close()
    at = app_for(tmp_path / "empty.db", monkeypatch)
    assert not at.exception
    assert "No runs recorded yet" in at.info[0].value
    (tmp_path / "junk.db").write_bytes(b"not a database" * 200)
    at = app_for(tmp_path / "junk.db", monkeypatch)
    assert not at.exception
    assert "Cannot read the audit store" in at.error[0].value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(db: Path, log_path: Path, *app_args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`streamlit run` exactly as the launcher starts it, serving ``db`` on a free port (``app_args`` after ``--db``,
    ``env`` added to the environment); yields its URL once healthy, always stopped afterwards."""
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false", "--", "--db", str(db), *app_args],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,  # the store comes from --db
        env={k: v for k, v in os.environ.items() if k != "FUSIONLINE_AUDIT_DB"} | (env or {}),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "streamlit did not become healthy in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, AuditFixture]]:
    """The dashboard over a factory audit store, as the launcher starts it."""
    fx = build_audit_db(tmp_path)
    with streamlit_server(fx.db, tmp_path / "streamlit.log") as url:
        yield url, fx


PARTS_VALUE_JS = """() => [...document.querySelectorAll('[data-testid="stMetric"]')]
    .find(m => m.innerText.includes('Parts inspected'))
    ?.querySelector('[data-testid="stMetricValue"]')?.innerText"""


MAIN_HAS_JS = """texts => { const main = document.querySelector('[data-testid="stMain"]');
    return !!main && texts.every(t => main.innerText.includes(t)); }"""


def check_live_refresh(page: Page, fx: AuditFixture) -> None:
    """A new run shows as live, its metrics follow new decisions without a reload, and it flips to finished."""
    store = AuditStore(fx.db)
    try:
        run_id = store.start_run("factory", {})
        page.reload(wait_until="domcontentloaded")
        page.wait_for_function(MAIN_HAS_JS, arg=["Live", f"run {run_id}"], timeout=30_000)
        page.wait_for_function(f"() => ({PARTS_VALUE_JS})() === '0'", timeout=15_000)
        for d in fx.decisions[:12]:
            store.record_decision(run_id, replace(d, ts=time.time()))
        page.wait_for_function(f"() => ({PARTS_VALUE_JS})() === '12'", timeout=15_000)
        store.finish_run(run_id, {"parts": 12})
        page.wait_for_function(MAIN_HAS_JS, arg=["Finished", f"run {run_id}"], timeout=15_000)
    finally:
        store.close()


def test_browser_renders_dashboard(server: tuple[str, AuditFixture], tmp_path: Path) -> None:
    url, fx = server
    expected = expected_metrics(fx)
    shot = tmp_path / "dashboard.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=30_000)
            metrics = page.locator('[data-testid="stMetric"]')
            page.wait_for_function("n => document.querySelectorAll('[data-testid=\"stMetric\"]').length >= n",
                                   arg=len(expected) + 2, timeout=30_000)
            page.get_by_text(expected["Throughput"]).first.wait_for(timeout=30_000)
            page.wait_for_function(  # content rendered: no skeletons, every chart drawn, every image loaded
                """() => { const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
                   return !document.querySelector('[data-testid="stSkeleton"]')
                     && document.querySelectorAll('[data-testid="stVegaLiteChart"] canvas, '
                          + '[data-testid="stVegaLiteChart"] svg.marks').length >= 5
                     && imgs.length === 8 && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
                timeout=30_000,
            )
            height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            page.set_viewport_size({"width": 1600, "height": min(int(height) + 40, 6000)})
            page.wait_for_timeout(700)  # charts re-layout to the new viewport
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text('[data-testid="stMain"]')
            metric_text = "\n".join(metrics.all_inner_texts())
            check_live_refresh(page, fx)
        finally:
            browser.close()
    shutil.copy(shot, "/tmp/dashboard.png")
    for label, value in expected.items():
        assert label in metric_text and value in metric_text, (label, value, metric_text)
    for heading in ("Decisions by class", "Latency distribution", "Modality weights", "Last rejected parts",
                    "Controllers", "Quarantine"):
        assert heading in text
    newest = [d for d in reversed(fx.decisions) if d.reject][:8]
    assert all(f"Rejected for {expected_reason(d)}" in text for d in newest)
    assert shot.stat().st_size > 50_000
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape[0] > 1500 and pixels.std() > 10  # a long page, not a blank one
    assert (pixels < 200).mean() > 0.02  # enough ink: text, charts and thumbnails


def test_apptest_password_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --password-env the page shows nothing but a password field until the right password is typed."""
    fx = build_audit_db(tmp_path)
    monkeypatch.setenv("FUSIONLINE_AUDIT_DB", str(fx.db))
    monkeypatch.setattr(sys, "argv", ["dashboard.py", "--password-env", "FUSIONLINE_TEST_PASSWORD"])
    monkeypatch.delenv("FUSIONLINE_TEST_PASSWORD", raising=False)
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception and not at.text_input and not at.metric and not at.selectbox
    assert "Dashboard locked" in at.error[0].value  # no password configured: locked, never open

    monkeypatch.setenv("FUSIONLINE_TEST_PASSWORD", "s3cret-Ω")
    at = AppTest.from_file(APP, default_timeout=30).run()
    [field] = at.text_input
    assert field.label == "Password" and field.proto.type == field.proto.PASSWORD
    assert not at.metric and not at.selectbox and not at.dataframe and fx.run_id not in str(at.main)
    field.input("s3cret").run()
    assert "Wrong password" in at.error[0].value and not at.metric
    at.text_input[0].input("s3cret-Ω").run()
    assert not at.exception and not at.text_input
    assert {m.label: m.value for m in at.metric}["Parts inspected"] == str(len(fx.decisions))
