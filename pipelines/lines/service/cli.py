"""``fusionline synth|train|eval|run|demo service``: the service-desk line's verbs, and the summary of a run.

Heavy imports happen inside the verb that needs them, so building the parser (and ``--help``) stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.cli import add_demo_dashboard_flags, format_summary, run_with_progress, serve_dashboard
from pipelines.lines import Command, shipped_model

LINE = "service"


def add_synth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="recording folder to write")
    p.add_argument("--tickets", type=int, default=400, help="number of tickets (each with 0 to 2 follow-ups)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same recording)")
    p.add_argument("--split", default="train", choices=["train", "held-out"],
                   help="which half of the complaint phrasings, voices and noise levels to draw from: held-out "
                        "recordings are worded, voiced and noised as no training recording is")
    p.add_argument("--size", type=int, default=224, help="side of the square photos (pixels)")
    p.add_argument("--fps", type=float, default=0.2, help="tickets per second on the recorded line")


def cmd_synth(args: argparse.Namespace) -> None:
    from pipelines.lines.service.synth import synth_service

    path = synth_service(args.out, args.tickets, args.seed, split=args.split, size=args.size, fps=args.fps)
    print(f"wrote {args.tickets} tickets to {path}")


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="training recording folder (with labels)")
    p.add_argument("--out", required=True, type=Path, help="model folder (safetensors + config.json)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs over the cached inputs")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--acoustic", type=Path, default=None,
                   help="adapted acoustic model (`fusionline fit service`) to hear the voice messages with; saved "
                        "with the model (default: pocketsphinx's stock model)")


def cmd_train(args: argparse.Namespace) -> None:
    from pipelines.lines.service.train import Recipe, train_service

    out = train_service(args.data, args.out, Recipe(epochs=args.epochs), seed=args.seed, threads=args.threads,
                        acoustic=args.acoustic)
    print(f"model saved to {out}")


def add_fit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path,
                   help="labelled service recording whose voice messages (with their words from labels.jsonl) the "
                        "acoustic model is adapted to")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for the adapted acoustic model (give it to `train service --acoustic`)")
    p.add_argument("--limit", type=int, default=None, help="adapt on the first N voice messages only")
    p.add_argument("--tau", type=float, default=None,
                   help="MAP prior weight: smaller moves the model further towards the recording's speech "
                        "(default: acoustic.MAP_TAU, 1)")


def cmd_fit(args: argparse.Namespace) -> None:
    from pipelines.lines.service.acoustic import MAP_TAU, adapt_to_recording

    done = adapt_to_recording(args.data, args.out, args.limit, MAP_TAU if args.tau is None else args.tau)
    print(f"adapted on {done.utterances} voice messages ({done.audio_s:.0f} s of speech; {done.skipped} left out: "
          f"words not in the dictionary) in {done.seconds:.0f} s; saved to {args.out}")


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="held-out recording folder (with labels)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped service model)")
    p.add_argument("--safety-set", type=Path, default=None,
                   help="also (or, without --data, only) score the safety filter on this labelled set of questions "
                        "and answers (tests/data/service/safety_heldout.yaml is the held-out one)")
    p.add_argument("--out", type=Path, default=None,
                   help="write metrics.json (and safety-metrics.json) here (default: runs/eval/<recording or set "
                        "name>)")


def cmd_eval(args: argparse.Namespace) -> None:
    safety_set = getattr(args, "safety_set", None)  # absent when `fusionline eval --data DIR` picked the line
    if args.data is None and safety_set is None:
        raise ValueError("eval service needs --data (a held-out recording) or --safety-set (a labelled safety set)")
    if args.data is not None:
        from pipelines.lines.service.evaluate import evaluate_service, format_report

        out = args.out or Path("runs") / "eval" / args.data.name
        print(format_report(evaluate_service(args.model or shipped_model(LINE), args.data, out)))
        print(f"metrics: {out / 'metrics.json'}")
    if safety_set is not None:
        from pipelines.lines.service.evaluate import evaluate_safety, format_safety_report

        out = args.out or Path("runs") / "eval" / safety_set.stem
        print(format_safety_report(evaluate_safety(safety_set, out=out)))
        print(f"metrics: {out / 'safety-metrics.json'}")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recording", required=True, type=Path, help="recording of tickets to replay")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped service model)")
    p.add_argument("--replicas", type=int, default=1,
                   help="model replicas (Ray actors, one CPU core each); follow-ups are answered in order with one")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, host:port, ray://host:port); default: start a local Ray")
    p.add_argument("--batch-size", type=int, default=8, help="largest micro-batch of messages per replica call")
    p.add_argument("--limit", type=int, default=None, help="stop after this many messages")
    p.add_argument("--audit-db", type=Path, default=Path("runs/audit.db"),
                   help="SQLite audit store (the dialog store and the human queue go beside it)")


def cmd_run(args: argparse.Namespace) -> None:
    from pipelines.lines.service.compose import ServiceLineConfig

    cfg = ServiceLineConfig(model_dir=str(args.model or shipped_model(LINE)), recording=str(args.recording),
                            audit_db=str(args.audit_db), replicas=args.replicas, batch_size=args.batch_size,
                            limit=args.limit)
    print(run_service(cfg, args.address))


def run_service(cfg, address: str | None = None) -> str:
    """Run the service line and return its summary table."""
    from pipelines.lines.service.compose import compose, score

    report = run_with_progress(LINE, compose, cfg, address, "msg",
                               {"model folder": cfg.model_dir, "recording": cfg.recording})
    return summary_table(report, score(report, cfg.recording), cfg)


def summary_table(report, metrics: dict, cfg) -> str:
    s = report.stats
    blocked = sum(d.extra.get("safety") == "block" for d in report.decisions)
    rows = [
        ("run id", report.run_id),
        ("messages", f"{s.items} ({len(report.decisions)} answered or escalated, {len(report.quarantined)} "
                     "quarantined)"),
        ("escalated to a human", f"{report.rejects} ({blocked} blocked by the safety filter)"),
        ("fault accuracy", f"{metrics['fault_accuracy']:.2%} of {metrics['scored']} tickets" if metrics
         else "no labels"),
        ("device accuracy", f"{metrics['device_accuracy']:.2%}" if metrics else "no labels"),
        ("unsafe follow-ups stopped", f"{metrics['unsafe_stopped']:.2%} of {metrics['unsafe_follow_ups']}"
         if metrics and metrics["unsafe_follow_ups"] else "none in the recording"),
        ("throughput", f"{s.fps:.2f} messages/s over {s.wall_s:.1f} s"),
        ("latency p50 / p99", f"{s.percentile(50):.0f} / {s.percentile(99):.0f} ms"),
        ("audit store", cfg.audit_db),
    ]
    return format_summary(rows, rule_beyond_keys=50)


def add_demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data"), help="folder for the recording and the audit store")
    p.add_argument("--tickets", type=int, default=24, help="held-out tickets to synthesise and answer")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped service model)")
    add_demo_dashboard_flags(p)


def cmd_demo(args: argparse.Namespace) -> None:
    from pipelines.lines.service.compose import ServiceLineConfig
    from pipelines.lines.service.synth import synth_service

    if args.tickets < 1:
        raise ValueError("--tickets must be positive")
    data: Path = args.data
    tickets, audit_db = data / "service-demo", data / "runs" / "audit.db"
    if not (tickets / "manifest.json").exists():
        print(f"[1/2] synthesising {args.tickets} held-out tickets (seed 41): photos, spoken complaints, follow-ups")
        synth_service(tickets, args.tickets, seed=41, split="held-out")
    print("[2/2] the line answers them on Ray: speech -> transcript -> fault -> guide -> safety -> answer or human")
    cfg = ServiceLineConfig(model_dir=str(args.model or shipped_model(LINE)), recording=str(tickets),
                            audit_db=str(audit_db))
    print(run_service(cfg))
    if not args.no_dashboard:
        serve_dashboard(audit_db, args.host, args.port, args.password_env)


COMMANDS: dict[str, Command] = {
    "synth": Command("support tickets: device photos with faults, spoken complaints, follow-ups; labels apart",
                     add_synth_flags, cmd_synth),
    "train": Command("train the fault model (frozen photo encoder + transcript through the router)",
                     add_train_flags, cmd_train),
    "fit": Command("adapt the recogniser's acoustic model to the line's voices (MAP, sphinxtrain)",
                   add_fit_flags, cmd_fit),
    "eval": Command("score a fault model on a held-out recording (photo-only / voice-only / fused ablation), "
                    "or the safety filter on a held-out safety set",
                    add_eval_flags, cmd_eval),
    "run": Command("the service-desk line: tickets answered with repair guides or escalated", add_run_flags,
                   cmd_run),
    "demo": Command("the service line end to end on held-out tickets, then the dashboard", add_demo_flags,
                    cmd_demo),
}
