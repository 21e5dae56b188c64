"""``fusionline synth|train|eval|run|demo factory``: the factory line's verbs, and the summary table of a run.

Heavy imports happen inside the verb that needs them, so building the parser (and ``--help``) stays instant.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from model.config import AUDIO_NORMS, LITE_STAGES  # no torch: --help stays instant
from pipelines.cli import (add_demo_dashboard_flags, add_replica_flags, format_summary, run_with_progress,
                           serve_dashboard)
from pipelines.lines import Command, shipped_model


def add_synth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="recording folder to write")
    p.add_argument("--parts", type=int, default=600, help="number of parts")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same recording)")
    p.add_argument("--size", default="640x480", help="frame size WIDTHxHEIGHT")
    p.add_argument("--fps", type=float, default=30.0, help="parts per second on the recorded line")
    p.add_argument("--image-format", default="png", choices=["png", "jpg"], help="frame encoding")
    p.add_argument("--workers", type=int, default=None,
                   help="rendering processes (default: 2 for 100 parts or more, else 1)")
    p.add_argument("--product", type=int, default=None,
                   help="a one-product line: every part is product K (design, material, pose, light and camera "
                        "fixed; nuisance, defects and sensor noise vary), the same product whatever --seed")
    p.add_argument("--renderer", default="paint", metavar="{paint,shaded,scene,photo,mixed,A+B[+C]}",
                   help="paint: textured parts with painted defects; shaded: an independently written renderer "
                        "(lit height maps: grooves, dents, cracks and contamination as geometry and material; "
                        "its own machine sounds); scene: a third, written independently of both (3-D parts under "
                        "a perspective camera; its own machines); photo: a fourth, independent of all three (flat "
                        "parts composited from photo textures, lit in image space; its own machines), kept out of "
                        "training as a held-out renderer; A+B[+C], e.g. paint+scene: each part from one "
                        "of them, in equal shares (labels name it); mixed: shaded+paint")


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r} is not WIDTHxHEIGHT") from None
    return w, h


def cmd_synth(args: argparse.Namespace) -> None:
    from pipelines.lines.factory.synth import synth_factory

    path = synth_factory(args.out, args.parts, args.seed, size=parse_size(args.size), fps=args.fps,
                         image_format=args.image_format, workers=args.workers, product=args.product,
                         renderer=args.renderer)
    print(f"wrote {args.parts} parts to {path}")


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="training recording folder")
    p.add_argument("--out", required=True, type=Path, help="model folder (safetensors + config.json + curves)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's recipe)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the recipe)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--decode-workers", type=int, default=2, help="processes decoding the recording")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per training process (the whole step on CPU; batch building and "
                        "augmentation with CUDA); default: 2, or with --workers the cluster's CPUs shared out")
    p.add_argument("--workers", type=int, default=None,
                   help="train on Ray Train with N data-parallel workers (DDP, one GPU each where the cluster has "
                        "GPUs, each taking 1/N of every batch), checkpointing every epoch into MODEL/checkpoints; "
                        "default: in this process, without Ray")
    p.add_argument("--address", default=None,
                   help="with --workers: the Ray cluster to join (auto, host:port, ray://host:port; MODEL must be a "
                        "folder every node sees); default: start a local Ray")
    p.add_argument("--resume", action="store_true",
                   help="with --workers: continue from the latest checkpoint in MODEL/checkpoints")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="with --workers: stop, checkpointed, after this many epochs of this run (--resume continues)")
    p.add_argument("--image-backbone", default="cnn", choices=["cnn", "efficientnet_lite0"],
                   help="image encoder: a CNN trained from scratch, or ImageNet-pretrained EfficientNet-Lite0 "
                        "(shipped offline, fine-tuned; slower, see docs/model.md); ignored with --init-from")
    p.add_argument("--frozen-stages", type=int, default=2, choices=range(LITE_STAGES + 1), metavar="N",
                   help=f"with --image-backbone efficientnet_lite0: how many of its {LITE_STAGES} stages keep their "
                        f"ImageNet weights (0-{LITE_STAGES}; the stem always does; {LITE_STAGES}: only the "
                        "projections train); ignored with --init-from (default: 2)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="frame size the image encoder sees, multiples of 16 (training crops are half of it); with "
                        "--init-from, the saved model is fine-tuned at this size (default: the saved model's, or "
                        "192 256)")
    p.add_argument("--audio-norm", default=None, choices=AUDIO_NORMS,
                   help="how the audio encoder normalises its log-mel input: clip (the clip's mean level removed) or "
                        "band (each mel band's mean removed: only how each band moves in time is left; transfers to "
                        "other machines' and microphones' sound, docs/model.md); with --init-from the saved model's "
                        "audio encoder is fine-tuned with it (default: clip, or the saved model's)")
    p.add_argument("--style-randomisation", type=float, default=0.0, metavar="P",
                   help="share of training images whose colours, gamma, illumination and local texture are redrawn "
                        "at random (model.train.randomise_style), for parts drawn by another renderer or camera")
    p.add_argument("--synthetic-defects", type=float, default=0.0, metavar="P",
                   help="share of good training parts given a randomly drawn scratch, crack, dent or "
                        "contamination, with its label and box (model.synthetic_defects): a third way of drawing "
                        "each defect, for parts drawn by another renderer (default: 0, none)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="saved model folder to continue training from (default: train from scratch)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision; auto: bf16 (or fp16) on CUDA, fp32 on CPU")
    p.add_argument("--task-weighting", default="fixed", choices=["fixed", "sigmoid", "meta"],
                   help="λ_t between the auxiliary losses (deep supervision, CAM) and the main ones: fixed 0.5, "
                        "a sigmoid schedule, or the sigmoid with k and t0 meta-learned on a held-out split")


def cmd_train(args: argparse.Namespace) -> None:
    from model.config import InspectorConfig
    from model.pretrained import read_config
    from model.train import TrainConfig
    from pipelines.distributed import RayTrain
    from pipelines.lines.factory.train import train_factory

    ray_train = None
    if args.workers is not None:
        ray_train = RayTrain(args.workers, args.address, args.threads, args.resume, args.stop_after)
    elif args.address or args.resume or args.stop_after is not None:
        raise ValueError("--address, --resume and --stop-after need --workers (training on Ray Train)")
    given = (("epochs", args.epochs), ("batch_size", args.batch_size), ("threads", args.threads))
    kwargs = {k: v for k, v in given if v is not None}
    for flag, share in (("--style-randomisation", args.style_randomisation),
                        ("--synthetic-defects", args.synthetic_defects)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{flag} {share}: a share, from 0 to 1")
    recipe = TrainConfig(precision=args.precision, task_weighting=args.task_weighting,
                         style_randomisation=args.style_randomisation, synthetic_defects=args.synthetic_defects)
    config = InspectorConfig(image_backbone=args.image_backbone, audio_norm=args.audio_norm or "clip",
                             image_frozen_stages=args.frozen_stages,
                             **({"image_highpass": 0} if args.image_backbone != "cnn" else {}))
    if args.image_size is not None:
        height, width = args.image_size
        if height < 32 or width < 32 or height % 16 or width % 16:
            raise ValueError(f"--image-size {height} {width}: both sides must be multiples of 16, at least 32")
        config.image_size = (height, width)
    elif args.init_from is not None:
        config.image_size = InspectorConfig.from_dict(read_config(args.init_from)).image_size
    recipe.crop = (config.image_size[0] // 2, config.image_size[1] // 2)
    out = train_factory(args.data, args.out, seed=args.seed, init_from=args.init_from, config=config,
                        train_config=recipe, workers=args.decode_workers, ray_train=ray_train,
                        image_size=config.image_size, audio_norm=args.audio_norm, **kwargs)
    print(f"model saved to {out}")


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model folder")
    p.add_argument("--data", required=True, type=Path, help="held-out recording folder (with labels)")
    p.add_argument(
        "--out", type=Path, default=None,
        help="write metrics.json, a confusion-matrix PNG and a contact sheet of the mistakes (mistakes.jpg) here",
    )
    p.add_argument("--anomaly", type=Path, default=None,
                   help="a good-only model of the product (fusionline fit factory --out): parts it flags are "
                        "rejected too, as run factory --anomaly decides, and its AUROC and the fused rule's are "
                        "reported (default: the classifier alone)")


def cmd_eval(args: argparse.Namespace) -> None:
    from pipelines.lines.factory.evaluate import evaluate, format_report

    anomaly = getattr(args, "anomaly", None)  # `fusionline eval --data` (no LINE) passes the common flags only
    print(format_report(evaluate(args.model, args.data, out_dir=args.out, anomaly=anomaly)))


def add_fit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--normal", required=True, type=Path,
                   help="recording of one product's normal production (parts labelled good, or every part when "
                        "it has no labels)")
    p.add_argument("--out", required=True, type=Path, help="folder to save the fitted anomaly model in")
    p.add_argument("--good", type=int, default=200, help="good parts to fit on (the first N)")
    p.add_argument("--coreset", type=int, default=2048, help="patches kept in the memory bank")
    p.add_argument("--feature-levels", type=int, nargs="+", default=[1], metavar="L",
                   help="EfficientNet-Lite0 feature levels the patches are built from (0..3, strides 2..16)")
    p.add_argument("--false-reject-rate", type=float, default=0.01,
                   help="share of held-out good parts the threshold lets through as anomalous")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def cmd_fit(args: argparse.Namespace) -> None:
    import torch

    from model.anomaly import AnomalyConfig
    from pipelines.lines.factory.fit import fit_good_parts

    if args.threads:
        torch.set_num_threads(args.threads)
    config = AnomalyConfig(coreset=args.coreset, false_reject_rate=args.false_reject_rate,
                           feature_levels=tuple(args.feature_levels))
    memory = fit_good_parts(args.normal, args.out, args.good, config)
    print(f"fitted on good parts of {args.normal}: {memory.bank.shape[0]} patches in the bank, threshold "
          f"{float(memory.threshold):.2f} ({args.false_reject_rate:.1%} false rejects on held-out good parts); "
          f"saved to {args.out}")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--recording", type=Path, help="recording folder to replay")
    src.add_argument("--camera", help="OpenCV source: device index, video file or RTSP URL")
    p.add_argument("--model", required=True, type=Path, help="model folder")
    p.add_argument("--anomaly", type=Path, default=None,
                   help="a good-only model of the product (fusionline fit factory --out): a part it flags is "
                        "rejected too, whatever the classifier said (default: the classifier alone)")
    add_replica_flags(p, replicas=2)
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, host:port, ray://host:port); default: start a local Ray")
    p.add_argument("--batch-size", type=int, default=16, help="largest micro-batch per replica call")
    p.add_argument("--max-in-flight", type=int, default=4, help="batches outstanding (backpressure bound)")
    p.add_argument("--speed", type=float, default=0.0,
                   help="replay speed: 1 = recorded time, N = N times faster, 0 = as fast as possible")
    p.add_argument("--limit", type=int, default=None, help="stop after this many items")
    p.add_argument("--loop", action="store_true", help="replay the recording in a loop (soak runs)")
    p.add_argument("--plc", default=None, help="PLC reject gate host:port (Modbus TCP); omit for none")
    p.add_argument("--mqtt", default=None, help="MQTT broker host:port; omit for none")
    p.add_argument("--audit-db", type=Path, default=Path("runs/audit.db"), help="SQLite audit store")
    p.add_argument("--cache-size", type=int, default=4096, help="per-replica result cache entries (0: off)")
    p.add_argument("--fail-safe-after", type=float, default=10.0, metavar="SECONDS",
                   help="a controller unreachable this long raises FAIL-SAFE (PLC gate held closed until caught up)")
    p.add_argument("--outbox-db", type=Path, default=None,
                   help="SQLite outbox of undelivered decisions (default: outbox.db beside the audit store)")


def cmd_run(args: argparse.Namespace) -> None:
    from pipelines.lines.factory.compose import FactoryLineConfig

    cfg = FactoryLineConfig(
        model_dir=str(args.model), recording=str(args.recording) if args.recording else None, camera=args.camera,
        audit_db=str(args.audit_db), replicas=args.replicas, gpus_per_replica=args.gpus_per_replica,
        runtime=args.runtime, anomaly=str(args.anomaly) if args.anomaly else None, batch_size=args.batch_size,
        max_in_flight=args.max_in_flight, speed=args.speed, limit=args.limit, loop=args.loop, plc=args.plc,
        mqtt=args.mqtt, cache_size=args.cache_size, fail_safe_after=args.fail_safe_after,
        outbox_db=str(args.outbox_db) if args.outbox_db else None,
    )
    print(run_factory(cfg, args.address))


def run_factory(cfg, address: str | None = None) -> str:
    """Run the factory line and return its summary table."""
    from pipelines.lines.factory.compose import compose, score

    report = run_with_progress("factory", compose, cfg, address, "part",
                               {"model folder": cfg.model_dir, "recording": cfg.recording,
                                "anomaly model": cfg.anomaly}, endless=cfg.loop)
    metrics = score(report, cfg.recording) if cfg.recording else {}
    return summary_table(report, metrics, cfg)


def summary_table(report, metrics: dict, cfg) -> str:
    s = report.stats
    rows = [
        ("run id", report.run_id),
        ("parts", f"{s.items} ({len(report.decisions)} decided, {len(report.quarantined)} quarantined)"),
        ("defect accuracy", f"{metrics['defect_accuracy']:.2%} of {metrics['scored']}" if metrics else "no labels"),
        ("machine-sound accuracy", f"{metrics['machine_accuracy']:.2%}" if metrics else "no labels"),
        ("rejects", str(report.rejects)),
        ("throughput", f"{s.fps:.1f} parts/s over {s.wall_s:.1f} s"),
        ("latency p50 / p99", f"{s.percentile(50):.1f} / {s.percentile(99):.1f} ms"),
        ("replicas × batch", f"{cfg.replicas} × {cfg.batch_size} ({cfg.runtime})"),
        ("anomaly model", f"{cfg.anomaly}: flagged {sum(bool(d.extra.get('anomalous')) for d in report.decisions)}"
                          if cfg.anomaly else "none (the classifier alone)"),
        ("PLC writes", str(report.controller_writes.get("plc", 0)) if cfg.plc else "no PLC"),
        ("MQTT messages", str(report.controller_writes.get("mqtt", 0)) if cfg.mqtt else "no broker"),
        ("delivery", "; ".join(f"{n}: {d.pending} pending, {d.already_delivered} delivered earlier, longest "
                                f"outage {d.longest_outage_s:.1f} s" for n, d in report.delivery.items()) or "none"),
        ("FAIL-SAFE", "; ".join(report.fail_safe) or "no"),
        ("replica restarts", str(len(report.replica_restarts))),
        ("audit store", cfg.audit_db),
    ]
    return format_summary(rows, rule_beyond_keys=40)


def add_demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data"), help="folder for recordings, model and audit")
    p.add_argument("--parts", type=int, default=600, help="held-out parts to replay (at least 500 for the demo)")
    p.add_argument("--retrain", action="store_true",
                   help="synthesise five training recordings (three of paint and shaded parts, half each, then "
                        "two of all three renderers) and train the shipped model's recipe into "
                        "DATA/models/factory-v7 (the pretrained encoder, 12 epochs on each in turn, the audio "
                        "encoder switched to per-band normalisation for the last; ~95 min on 2 quiet cores; a model "
                        "already there is reused) instead of using the shipped model")
    p.add_argument("--train-parts", type=int, default=4800,
                   help="with --retrain: parts in each training recording (the shipped model's: 4,800)")
    p.add_argument("--replicas", type=int, default=2, help="model replicas (Ray actors)")
    add_demo_dashboard_flags(p)


@dataclass(frozen=True)
class RecipeStage:
    """One training run of the shipped model's recipe: a fresh recording of ``renderer``, ``epochs`` on it."""

    recording: str  # folder under the demo's --data
    synth_seed: int
    epochs: int
    seed: int  # training seed
    renderer: str = "mixed"  # synth_factory's renderer (or mixture) for the recording
    audio_norm: str | None = None  # the audio encoder's input normalisation from this stage on (None: kept)


#: How the shipped model (``tests/data/models/factory-v6``, its model card) was trained; ``demo --retrain`` repeats
#: it. The first stage starts from the ImageNet weights (it is ``factory-v3``), each later one continues from the one
#: before on parts it has not seen (after the second: ``factory-v4``, after the third ``factory-v5``); the fourth
#: adds the third renderer (``factory-v6``), the last switches the audio encoder to per-band normalisation.
SHIPPED_RECIPE = (RecipeStage("mixed-train", 21, 12, 0), RecipeStage("mixed-train-b", 22, 12, 1),
                  RecipeStage("mixed-train-c", 23, 12, 2), RecipeStage("mixed3-train", 24, 12, 3, "paint+shaded+scene"),
                  RecipeStage("mixed3-train-b", 25, 12, 4, "paint+shaded+scene", audio_norm="band"))
SHIPPED_CONFIG = {"image_backbone": "efficientnet_lite0", "image_highpass": 0, "version": "factory-inspector-7.0"}


def cmd_demo(args: argparse.Namespace) -> None:
    from connectors.modbus import PlcSimulator
    from connectors.mqtt import MosquittoBroker
    from model.config import InspectorConfig
    from pipelines.lines.factory.compose import FactoryLineConfig
    from pipelines.lines.factory.evaluate import evaluate, format_report
    from pipelines.lines.factory.synth import synth_factory
    from pipelines.lines.factory.train import train_factory

    if args.parts < 1:
        raise ValueError("--parts must be positive")
    data: Path = args.data
    holdout_rec = data / "factory-holdout"
    model_dir, audit_db = data / "models" / "factory-v7", data / "runs" / "audit.db"
    if not (holdout_rec / "manifest.json").exists():
        print(f"[1/5] synthesising the held-out recording ({args.parts} parts, seed 2, never seen in training)")
        synth_factory(holdout_rec, args.parts, seed=2)
    if not args.retrain:
        model_dir = shipped_model("factory")
        print(f"[2-3/5] using the shipped model {model_dir} (--retrain trains one here)")
    elif not (model_dir / "config.json").exists():
        start = None
        for k, stage in enumerate(SHIPPED_RECIPE, 1):
            recording = data / stage.recording
            if not (recording / "manifest.json").exists():
                print(f"[2/5] synthesising training recording {k} of {len(SHIPPED_RECIPE)} ({args.train_parts} parts, "
                      f"seed {stage.synth_seed}, renderers {stage.renderer})")
                synth_factory(recording, args.train_parts, seed=stage.synth_seed, renderer=stage.renderer)
            out = model_dir if k == len(SHIPPED_RECIPE) else model_dir.with_name(f"{model_dir.name}-stage{k}")
            print(f"[3/5] training stage {k} of {len(SHIPPED_RECIPE)} (pretrained EfficientNet-Lite0 encoder"
                  + (f", continuing from {start})" if start else ")"))
            if not (out / "config.json").exists():
                train_factory(recording, out, seed=stage.seed, epochs=stage.epochs, init_from=start,
                              config=None if start else InspectorConfig(**SHIPPED_CONFIG), audio_norm=stage.audio_norm)
            start = out
    print("[4/5] held-out evaluation")
    print(format_report(evaluate(model_dir, holdout_rec, out_dir=audit_db.parent / "eval" / holdout_rec.name)))
    print("[5/5] replaying the held-out line through Ray → PLC simulator + Mosquitto → audit")
    # the demo's PLC and broker are fresh, so is its outbox (a kept one would hold the last demo's decisions as
    # delivered, and the idempotent controllers would be sent nothing)
    outbox_db = audit_db.with_name("demo-outbox.db")
    for suffix in ("", "-wal", "-shm"):
        outbox_db.with_name(outbox_db.name + suffix).unlink(missing_ok=True)
    with PlcSimulator("127.0.0.1", 0) as plc, MosquittoBroker() as broker:
        cfg = FactoryLineConfig(model_dir=str(model_dir), recording=str(holdout_rec), audit_db=str(audit_db),
                                replicas=args.replicas, plc=f"127.0.0.1:{plc.port}", mqtt=f"127.0.0.1:{broker.port}",
                                outbox_db=str(outbox_db))
        print(run_factory(cfg))
    if not args.no_dashboard:
        serve_dashboard(audit_db, args.host, args.port, args.password_env)


def add_export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help="model folder to export, written into (default: the shipped model)")
    p.add_argument("--runtime", choices=["onnx", "int8"], required=True,
                   help="onnx: the fp32 graph (model.onnx); int8: also quantised, calibrated on --calibration "
                        "(model.int8.onnx)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="with int8: a recording of the line's parts whose frames and sounds set the activation "
                        "ranges (never the held-out one you will score)")
    p.add_argument("--calibration-parts", type=int, default=256, help="with int8: parts read for calibration")


def cmd_export(args: argparse.Namespace) -> None:
    from pipelines.lines.factory.export import export_factory

    model = args.model or shipped_model("factory")
    path = export_factory(model, args.runtime, args.calibration, args.calibration_parts)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); run it with `fusionline run factory --model {model} "
          f"--runtime {args.runtime}`")


def add_cascade_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--small", required=True, type=Path, help="the small, fast model folder (decides when sure)")
    p.add_argument("--big", type=Path, default=None, help="the big model folder (default: the shipped model)")
    p.add_argument("--data", required=True, type=Path,
                   help="labelled validation recording neither model trained on: the temperature and the threshold "
                        "are chosen on it")
    p.add_argument("--out", required=True, type=Path,
                   help="cascade folder to write (config.json naming both models); serve it as a model folder")
    p.add_argument("--max-drop", type=float, default=0.005,
                   help="defect accuracy the cascade may lose against the big model alone, on --data (0.005: half "
                        "a point)")


def cmd_cascade(args: argparse.Namespace) -> None:
    from pipelines.lines.factory.cascade import build_cascade

    m = build_cascade(args.small, args.big or shipped_model("factory"), args.data, args.out, args.max_drop)
    print(f"cascade written to {args.out}: temperature {m['temperature']:.2f}, threshold {m['threshold']:.4f}; on "
          f"{m['items']} validation parts the small model decides {m['decided_share']:.1%}, accuracy "
          f"{m['accuracy']:.2%} (big alone {m['big_accuracy']:.2%}, small alone {m['small_accuracy']:.2%}); run it "
          f"with `fusionline run factory --model {args.out}`")


COMMANDS: dict[str, Command] = {
    "synth": Command("factory parts: textured surfaces with defects, machine sound", add_synth_flags, cmd_synth),
    "train": Command("train the factory inspector (image + audio router)", add_train_flags, cmd_train),
    "eval": Command("score a factory model on a held-out recording", add_eval_flags, cmd_eval),
    "fit": Command("fit a good-only anomaly model to one product from its good parts", add_fit_flags, cmd_fit),
    "export": Command("the factory model for ONNX Runtime (fp32 or static INT8)", add_export_flags, cmd_export),
    "cascade": Command("a small→big confidence cascade of two factory models", add_cascade_flags, cmd_cascade),
    "run": Command("the defect-inspection line", add_run_flags, cmd_run),
    "demo": Command("the whole factory line end to end on embedded defaults (`make demo`)", add_demo_flags, cmd_demo),
}
