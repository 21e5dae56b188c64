"""``fusionline synth|train|eval|index|run|demo medical``: the medical line's verbs, and the summary of a run.

Heavy imports happen inside the verb that needs them, so building the parser (and ``--help``) stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.cli import (add_demo_dashboard_flags, add_replica_flags, format_summary, run_with_progress,
                           serve_dashboard)
from pipelines.lines import Command, shipped_model

LINE = "medical"


def add_synth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="recording folder to write")
    p.add_argument("--cases", type=int, default=200, help="number of cases (patients, one CT study each)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same recording)")
    p.add_argument("--family", default="chest-a", choices=["chest-a", "chest-b"],
                   help="phantom family rendering the CTs: chest-a trains the shipped model; chest-b, written "
                        "independently (other anatomy model, noise and kernel), is the shift test")
    p.add_argument("--size", type=int, default=256, help="rows = columns of a slice (pixels)")
    p.add_argument("--slices", type=int, default=64, help="slices per series")
    p.add_argument("--fps", type=float, default=0.5, help="cases per second on the recorded line")
    p.add_argument("--workers", type=int, default=None,
                   help="rendering processes (default: up to 4 cores for 8 cases or more; the output does not "
                        "depend on it)")


def cmd_synth(args: argparse.Namespace) -> None:
    from pipelines.lines.medical.synth import synth_medical

    path = synth_medical(args.out, args.cases, args.seed, family=args.family, size=args.size, slices=args.slices,
                         fps=args.fps, workers=args.workers)
    print(f"wrote {args.cases} cases to {path}")


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="training recording folder (with labels)")
    p.add_argument("--out", required=True, type=Path, help="model folder (safetensors + config.json + curves)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's recipe)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def cmd_train(args: argparse.Namespace) -> None:
    from pipelines.lines.medical.train import train_medical

    out = train_medical(args.data, args.out, seed=args.seed, epochs=args.epochs, threads=args.threads)
    print(f"model saved to {out}")


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="held-out recording folder (with labels)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped medical model)")
    p.add_argument("--out", type=Path, default=None,
                   help="write metrics.json and the ROC curves here (default: runs/eval/<recording name>)")


def cmd_eval(args: argparse.Namespace) -> None:
    from pipelines.lines.medical.evaluate import evaluate_medical, format_report

    out = args.out or Path("runs") / "eval" / args.data.name
    print(format_report(evaluate_medical(args.model or shipped_model(LINE), args.data, out)))
    print(f"metrics: {out / 'metrics.json'}")


def add_index_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="labelled recording of past cases")
    p.add_argument("--out", required=True, type=Path, help="index folder to write (cases.faiss + cases.jsonl)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped medical model)")


def cmd_index(args: argparse.Namespace) -> None:
    from pipelines.lines.medical.similar import build_case_index

    index = build_case_index(args.model or shipped_model(LINE), args.data, args.out)
    print(f"indexed {len(index)} past cases in {args.out}")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--recording", type=Path, help="recording folder to replay")
    src.add_argument("--pacs", default=None, metavar="HOST:PORT",
                     help="Orthanc's DICOM address: take new CT studies from it and store the SR and SEG back")
    p.add_argument("--pacs-http-port", type=int, default=8042, help="Orthanc's REST port (with --pacs)")
    p.add_argument("--ehr", type=Path, default=None,
                   help="recording whose FHIR records and notes answer for the PACS studies (with --pacs)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped medical model)")
    add_replica_flags(p, replicas=1, runtimes=("eager",))
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, host:port, ray://host:port); default: start a local Ray")
    p.add_argument("--batch-size", type=int, default=2, help="largest micro-batch of studies per replica call")
    p.add_argument("--limit", type=int, default=None, help="stop after this many studies")
    p.add_argument("--idle", type=float, default=10.0, metavar="SECONDS",
                   help="with --pacs: stop once no new study arrived for this long")
    p.add_argument("--cases-index", type=Path, default=None,
                   help="similar-cases index folder the line adds its cases to (omit for none)")
    p.add_argument("--audit-db", type=Path, default=Path("runs/audit.db"), help="SQLite audit store")


def cmd_run(args: argparse.Namespace) -> None:
    from pipelines.lines.medical.compose import MedicalLineConfig

    cfg = MedicalLineConfig(
        model_dir=str(args.model or shipped_model(LINE)), recording=str(args.recording) if args.recording else None,
        pacs=args.pacs, pacs_http_port=args.pacs_http_port, ehr=str(args.ehr) if args.ehr else None,
        audit_db=str(args.audit_db), cases_index=str(args.cases_index) if args.cases_index else None,
        replicas=args.replicas, gpus_per_replica=args.gpus_per_replica, batch_size=args.batch_size,
        limit=args.limit, idle_s=args.idle,
    )
    print(run_medical(cfg, args.address))


def run_medical(cfg, address: str | None = None) -> str:
    """Run the medical line and return its summary table."""
    from pipelines.lines.medical.compose import compose, pseudonym_key, score

    report = run_with_progress(LINE, compose, cfg, address, "study", {
        "model folder": cfg.model_dir, "recording": cfg.recording, "EHR recording": cfg.ehr})
    if cfg.recording:
        metrics = score(report, cfg.recording)
    elif cfg.ehr:  # PACS studies are decided under pseudonyms: the EHR recording maps them back to its cases
        from connectors.pacs import RecordingEHR

        metrics = score(report, cfg.ehr, RecordingEHR(cfg.ehr).item_ids(pseudonym_key(cfg)))
    else:
        metrics = {}
    return summary_table(report, metrics, cfg)


def summary_table(report, metrics: dict, cfg) -> str:
    s = report.stats
    rows = [
        ("run id", report.run_id),
        ("studies", f"{s.items} ({len(report.decisions)} decided, {len(report.quarantined)} quarantined)"),
        ("flagged (nodule)", str(report.rejects)),
        ("nodule presence", f"{metrics['presence_accuracy']:.2%} right of {metrics['scored']}" if metrics
         else "no labels"),
        ("localised", f"{metrics['hit_rate']:.2%} of true nodules found within their radius" if metrics
         else "no labels"),
        ("throughput", f"{s.fps:.2f} studies/s over {s.wall_s:.1f} s"),
        ("latency p50 / p99", f"{s.percentile(50):.0f} / {s.percentile(99):.0f} ms"),
        ("PACS (SR + SEG)", str(report.controller_writes.get("pacs", 0)) if cfg.pacs else "no PACS"),
        ("similar-cases index", str(report.controller_writes.get("cases", 0)) + " added" if cfg.cases_index
         else "none"),
        ("audit store", cfg.audit_db),
    ]
    return format_summary(rows, rule_beyond_keys=50)


def add_demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data"), help="folder for recordings, PACS storage and audit")
    p.add_argument("--cases", type=int, default=12, help="new studies the PACS receives and the line decides")
    p.add_argument("--past-cases", type=int, default=24, help="labelled past cases in the similar-cases index")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped medical model)")
    add_demo_dashboard_flags(p)


def cmd_demo(args: argparse.Namespace) -> None:
    from connectors.pacs import OrthancServer
    from pipelines.lines.medical.compose import MedicalLineConfig
    from pipelines.lines.medical.similar import build_case_index
    from pipelines.lines.medical.synth import synth_medical

    if args.cases < 1:
        raise ValueError("--cases must be positive")
    data: Path = args.data
    model_dir = args.model or shipped_model(LINE)
    studies, past = data / "medical-demo", data / "medical-past"
    index_dir, audit_db = data / "runs" / "medical-cases", data / "runs" / "audit.db"
    if not (studies / "manifest.json").exists():
        print(f"[1/4] synthesising {args.cases} new studies (seed 31) and {args.past_cases} past cases (seed 32)")
        synth_medical(studies, args.cases, seed=31)
    if not (past / "manifest.json").exists():
        synth_medical(past, args.past_cases, seed=32)
    if not (index_dir / "cases.faiss").exists():
        print("[2/4] indexing the past cases by the model's case embedding (faiss)")
        build_case_index(model_dir, past, index_dir)
    print("[3/4] starting Orthanc and sending the new studies by C-STORE")
    with OrthancServer() as orthanc:  # a fresh PACS each demo, so every study is new to it
        sent = orthanc.client().store_recording(studies)
        print(f"      {sent} instances stored in Orthanc (http://{orthanc.host}:{orthanc.http_port})")
        print("[4/4] the line takes the studies from Orthanc → Ray replicas → SR + SEG back to Orthanc, "
              "FHIR reports, similar-cases index → audit")
        cfg = MedicalLineConfig(model_dir=str(model_dir), pacs=f"{orthanc.host}:{orthanc.dicom_port}",
                                pacs_http_port=orthanc.http_port, ehr=str(studies), audit_db=str(audit_db),
                                cases_index=str(index_dir), limit=args.cases, idle_s=5.0,
                                outbox_db=str(audit_db.with_name("medical-demo-outbox.db")))
        print(run_medical(cfg))
    if not args.no_dashboard:
        serve_dashboard(audit_db, args.host, args.port, args.password_env or demo_password())


def demo_password(variable: str = "FUSIONLINE_DEMO_PASSWORD") -> str:
    """Put a fresh password in ``$variable`` for the demo's dashboard, print it, and return the variable's name:
    the medical page shows CT images and records only behind a password."""
    import os
    import secrets

    os.environ[variable] = password = secrets.token_urlsafe(9)
    print(f"dashboard password (CT images and records are shown only behind it): {password}")
    return variable


COMMANDS: dict[str, Command] = {
    "synth": Command("chest CT studies with FHIR records and notes; nodules labelled apart", add_synth_flags,
                     cmd_synth),
    "train": Command("train the nodule model (CT + record + note router)", add_train_flags, cmd_train),
    "eval": Command("score a nodule model on a held-out recording (with the modality ablation)", add_eval_flags,
                    cmd_eval),
    "index": Command("index labelled past cases for the similar-cases view (faiss)", add_index_flags, cmd_index),
    "run": Command("the lung-nodule decision-support line", add_run_flags, cmd_run),
    "demo": Command("the medical line end to end against a real Orthanc PACS", add_demo_flags, cmd_demo),
}
