"""``fusionline`` — the command line.

``fusionline synth|train|eval|run|demo LINE`` are the registered lines' own verbs (:mod:`pipelines.lines`, each
line's ``cli.py``); the rest (``rescore LINE``, ``serve LINE``, ``plc-sim``, ``dashboard``, ``audit``) serve every
line. Every subcommand documents every flag (``fusionline SUBCOMMAND [LINE] --help``). Heavy imports happen inside
the subcommand that needs them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import lines

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from pipelines.line import Line, LineReport

log = logging.getLogger("fusionline.cli")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return args.func(args) or 0
    except (OSError, ValueError) as exc:  # unreachable peers, missing files, bad arguments
        print(f"fusionline: error: {exc}", file=sys.stderr)
        return 2


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None or its help already says what the default means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


#: The verbs every line may provide, ``fusionline VERB LINE``; each line's ``cli.COMMANDS`` says which it does.
LINE_VERBS: dict[str, str] = {
    "synth": "write a labelled synthetic recording",
    "train": "train a model on a recording",
    "eval": "score a model on a held-out recording",
    "index": "index labelled past cases for similar-case search",
    "fit": "fit a model to your line from its good parts",
    "export": "export a model for the ONNX Runtime runtimes (fp32, INT8)",
    "cascade": "tie a small and a big model into a confidence cascade",
    "run": "run a line on Ray",
    "demo": "a line end to end on embedded defaults (`make demo`)",
}


def build_parser() -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="fusionline", formatter_class=fmt,
        description="Multimodal AI decisions on industrial and clinical lines: synthesise recordings, train, "
        "evaluate, run lines on Ray, emulate a PLC, serve dashboards.",
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="logging verbosity")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for verb, help_text in LINE_VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, formatter_class=fmt,
                                     description=f"{help_text}; registered lines: {', '.join(lines.line_names())}")
        line_sub = verb_parser.add_subparsers(dest="line", required=True, metavar="LINE")
        for name in lines.line_names():
            command = lines.commands(name).get(verb)
            if command is not None:
                add_command(line_sub, name, command)
        if verb == "eval":
            add_recording_eval_flags(verb_parser)
            line_sub.required = False

    add_command(sub, "rescore", lines.Command(
        "re-score recorded archives in batch on Ray Data (Parquet, resumable)", add_rescore_flags, cmd_rescore),
        description="Score every item of one or more recordings with a line's model on a pool of Ray Data actors "
        "hosting the line's handler, as the streaming replicas do. OUT/shards/<shard id>.parquet holds one row per "
        "item (item_id, decision or 'quarantined' with its reason, confidence, modality weights, the other heads' "
        "outputs, input digest, model version and digest); OUT/summary.json and the printed table give items, "
        "decided, quarantined, per-class counts, accuracy where the recordings have labels, items/s and the shards. "
        "Run again into the same OUT (after a kill, say), it skips the shards done and ends with exactly one row per "
        "item; shards another model scored are refused unless --rescore-stale. Inside a Ray job (fusionline submit) "
        "it joins the job's cluster (RAY_ADDRESS).")
    add_command(sub, "serve", lines.Command(
        "serve a line's model over HTTP (Ray Serve, dynamic batching)", add_serve_flags, cmd_serve),
        description="Serve LINE's model over HTTP with Ray Serve: POST /v1/LINE/decide takes one item's payloads as a "
        "multipart upload (the parts the line's handler reads: image + audio for factory, ct files + record + note "
        "for medical) and answers the decision as JSON, or 422 with the item and the reason; GET /v1/lines, "
        "/healthz, /docs (OpenAPI). Concurrent requests are batched in each model replica (--max-batch, "
        "--batch-wait-ms) and go through the same replica (result cache, handler) as the streaming line.")
    add_command(sub, "submit", lines.Command(
        "run a fusionline command as a Ray job (Jobs API), following its logs", add_submit_flags, cmd_submit),
        description="Submit COMMAND (after --) as a job to a Ray cluster's jobs server, with this checkout as its "
        "working directory, print its logs as it runs and exit with its status (0 when it succeeded, the command's "
        "own status when it failed, 1 when it was stopped). A leading `fusionline` runs as `python -m pipelines.cli` "
        "with the cluster's Python. Without --address (or FUSIONLINE_RAY_ADDRESS) it starts a local Ray head, which "
        "stays up for `fusionline jobs` until `fusionline jobs down`. See docs/scale-out.md.")

    jobs = sub.add_parser("jobs", help="list Ray jobs, read their logs, stop one; stop the local head",
                          formatter_class=fmt)
    jobs_sub = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    jl = jobs_sub.add_parser("list", formatter_class=fmt, help="the submitted jobs: id, status, start, duration, "
                             "command")
    jg = jobs_sub.add_parser("logs", formatter_class=fmt, help="print a job's logs")
    jg.add_argument("job_id", metavar="ID", help="the job's id (fusionline jobs list)")
    jg.add_argument("--follow", action="store_true", help="keep printing until the job ends; exit with its status")
    js = jobs_sub.add_parser("stop", formatter_class=fmt, help="stop a running job and wait until it has stopped")
    js.add_argument("job_id", metavar="ID", help="the job's id (fusionline jobs list)")
    for job_parser in (jl, jg, js):
        add_jobs_address_flag(job_parser)
    jd = jobs_sub.add_parser("down", formatter_class=fmt,
                             help="stop the local Ray head `fusionline submit` started (its processes only)")
    jl.set_defaults(func=cmd_jobs_list)
    jg.set_defaults(func=cmd_jobs_logs)
    js.set_defaults(func=cmd_jobs_stop)
    jd.set_defaults(func=cmd_jobs_down)

    plc = sub.add_parser("plc-sim", help="emulate the PLC reject gate (Modbus TCP server)", formatter_class=fmt)
    plc.add_argument("--host", default="127.0.0.1", help="address to bind")
    plc.add_argument("--port", type=int, default=5020, help="TCP port (0: any free port)")
    plc.set_defaults(func=cmd_plc_sim)

    dash = sub.add_parser("dashboard", help="serve the Streamlit dashboard over an audit store",
                          formatter_class=fmt)
    add_dashboard_flags(dash)
    dash.add_argument("--ray-address", default=None, metavar="URL",
                      help="the Ray jobs server the jobs page lists, http://HEAD:8265 (default: "
                           "$FUSIONLINE_RAY_ADDRESS, else the local head `fusionline submit` started)")
    dash.set_defaults(func=cmd_dashboard)

    audit = sub.add_parser("audit", help="check the audit trail", formatter_class=fmt)
    audit_sub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    av = audit_sub.add_parser("verify", formatter_class=fmt,
                              help="recompute the audit store's hash chain; exit 0 when intact, 1 when tampered")
    av.add_argument("--db", type=Path, default=Path("runs/audit.db"), help="SQLite audit store to verify (read-only)")
    av.set_defaults(func=cmd_audit_verify)
    return parser


def add_command(subparsers: argparse._SubParsersAction, name: str, command: lines.Command,
                description: str | None = None) -> None:
    """Add ``name`` to ``subparsers``: its parser (``command.help``, ``description``), ``command``'s flags, and
    ``command.run`` as what it runs (``args.func``)."""
    parser = subparsers.add_parser(name, help=command.help, description=description, formatter_class=_HelpFormatter)
    command.add_flags(parser)
    parser.set_defaults(func=command.run)


def add_recording_eval_flags(p: argparse.ArgumentParser) -> None:
    """``fusionline eval --data DIR``: no LINE, no model: the recording's own line scores it with its shipped model."""
    p.add_argument("--data", type=Path, default=None,
                   help="held-out recording (with labels); without LINE, its manifest names the line and that "
                        "line's shipped model scores it")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for metrics.json and the plots (default: runs/eval/<recording name>)")
    p.set_defaults(func=cmd_eval_recording)


def cmd_eval_recording(args: argparse.Namespace) -> int | None:
    from connectors.recording import Manifest

    if args.data is None:
        raise ValueError("eval: name a LINE (fusionline eval LINE --help), or give --data RECORDING")
    line = Manifest.read(args.data).line
    out = args.out or Path("runs") / "eval" / args.data.resolve().name
    print(f"recording {args.data}: line {line!r}, shipped model {lines.shipped_model(line)}; metrics to {out}")
    return lines.commands(line)["eval"].run(
        argparse.Namespace(data=args.data, model=lines.shipped_model(line), out=out))


def add_rescore_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("line", choices=lines.line_names(), metavar="LINE",
                   help=f"the line whose handler scores the items ({', '.join(lines.line_names())})")
    p.add_argument("--archive", type=Path, action="append", required=True, metavar="DIR",
                   help="recording of LINE to score (repeat for several); every Ray node hosting a replica reads it "
                        "at this path")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the line's shipped model)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: shards/*.parquet (one row per item) and summary.json; one that holds an "
                        "earlier run of the same archives and shard size is resumed")
    p.add_argument("--replicas", type=int, default=2,
                   help="model replicas: Ray Data actors, one CPU core each (a share of a GPU where the cluster "
                        "has GPUs)")
    p.add_argument("--shard-size", type=int, default=64,
                   help="events per shard: the unit of work, of resuming and of one Parquet file")
    p.add_argument("--batch-size", type=int, default=16, help="items per handler call within a shard")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, host:port, ray://host:port); default: the cluster in "
                        "RAY_ADDRESS (set inside a Ray job), else a local Ray started and stopped here")
    p.add_argument("--rescore-stale", action="store_true",
                   help="score again, with this model, the shards in OUT that another model scored (default: "
                        "refuse, naming both models)")


def cmd_rescore(args: argparse.Namespace) -> None:
    import ray.data
    from tqdm import tqdm

    from pipelines.rescore import format_summary, rescore

    model = args.model or lines.shipped_model(args.line)
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar, of shards, instead of Ray Data's
    bars: list[tqdm] = []  # the shards' bar, shown once the archives, model and OUT are checked

    def progress(done: int, planned: int) -> None:
        if not bars:
            bars.append(tqdm(total=planned, unit="shard", desc=f"rescore {args.line}"))
        bars[0].update(done - bars[0].n)

    try:
        summary = rescore(args.line, args.archive, model, args.out, replicas=args.replicas, shard_size=args.shard_size,
                          batch_size=args.batch_size, rescore_stale=args.rescore_stale, progress=progress,
                          address=args.address)
    finally:
        for bar in bars:
            bar.close()
        ray.shutdown()  # leaves the cluster it joined; stops the local Ray it started
    print(format_summary(summary))
    print(f"summary: {args.out / 'summary.json'}")


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("line", choices=lines.line_names(), metavar="LINE",
                   help=f"the line whose model answers ({', '.join(lines.line_names())})")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the line's shipped model)")
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP endpoint binds (loopback by default)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    add_replica_flags(p, replicas=1)
    p.add_argument("--max-batch", type=int, default=16, help="most items one replica decides in one batch")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a replica waits for a partial batch to fill before deciding it")
    p.add_argument("--cache-size", type=int, default=4096,
                   help="result cache entries per replica, keyed by model version + input digest (0: none)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, host:port, ray://host:port; uploaded CT series are spooled on "
                        "this node, so the replicas must share its disk); default: start a local Ray")


def cmd_serve(args: argparse.Namespace) -> None:
    from pipelines.serve import Serving, serve_line

    serving = Serving(replicas=args.replicas, gpus_per_replica=args.gpus_per_replica, runtime=args.runtime,
                      max_batch=args.max_batch, batch_wait_s=args.batch_wait_ms / 1000, cache_size=args.cache_size)
    serve_line(args.line, args.model or lines.shipped_model(args.line), args.host, args.port, serving, args.address)


def add_jobs_address_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, metavar="URL",
                   help="the Ray jobs server, http://HEAD:8265 (default: $FUSIONLINE_RAY_ADDRESS, else the local "
                        "head an earlier `fusionline submit` started); with RAY_AUTH_MODE=token the Ray token is sent")


def add_submit_flags(p: argparse.ArgumentParser) -> None:
    add_jobs_address_flag(p)
    p.add_argument("--head-port", type=int, default=8265, metavar="PORT",
                   help="without an address: the local head's jobs server (and dashboard) port; 0 or a port in use: "
                        "any free one")
    p.add_argument("--no-working-dir", action="store_true",
                   help="upload nothing: the cluster runs the fusionline it has installed (a container image)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="a package, or a requirements file read here (e.g. requirements.lock), the job's Python "
                        "gets on each node (Ray builds that environment once per node); repeatable (default: none)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for the job and its workers; repeatable (default: none)")
    p.add_argument("--num-cpus", type=float, default=None, metavar="N",
                   help="CPU cores the command's own process reserves (default: none; its Ray actors ask for theirs)")
    p.add_argument("--num-gpus", type=float, default=None, metavar="N", help="GPUs the command's own process reserves")
    p.add_argument("--submission-id", default=None, metavar="ID",
                   help="the job's id (default: fusionline-<verb>-<line>-<UTC time>-<4 hex>)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once submitted (fusionline jobs logs ID --follow picks the logs up)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="what the job runs, e.g. -- fusionline rescore factory --archive DIR --out DIR")


def _jobs_module():
    """:mod:`pipelines.jobs`, with Ray's own log lines at this command's ``--log-level``, and Ray's built-in working
    directory excludes left to :data:`pipelines.jobs.WORKING_DIR_EXCLUDES` (which holds them), so that Ray does not
    warn on every submit that it applies them."""
    import ray.job_submission  # noqa: F401  (configures Ray's loggers, which the next line then sets)

    from pipelines import jobs

    level = logging.getLogger().level
    for name in [name for name in logging.root.manager.loggerDict if name == "ray" or name.startswith("ray.")]:
        logging.getLogger(name).setLevel(level)
    os.environ.setdefault("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")
    return jobs


def cmd_submit(args: argparse.Namespace) -> int:
    jobs = _jobs_module()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    env_vars = dict(_key_value(item) for item in args.env)
    runtime_env = jobs.runtime_env(None if args.no_working_dir else jobs.ROOT, args.pip, env_vars)
    for warning in jobs.path_warnings(command, uploaded=not args.no_working_dir):
        print(f"warning: {warning}", file=sys.stderr)
    jobs.entrypoint(command)  # no command: the error before any head starts
    if args.address is None and not os.environ.get(jobs.ADDRESS_ENV) and jobs.LocalHead.load() is None:
        head = jobs.LocalHead.start(jobs_port=args.head_port)
        head.save()
        print(f"no --address: started a local Ray head (pid {head.pid}) with its jobs server and dashboard at "
              f"{head.address}; it stays up for `fusionline jobs list|logs|stop` and later submits. Stop it with "
              "`fusionline jobs down` (this head only; `ray stop` would stop every Ray on this machine).")
    client = jobs.job_client(args.address)
    job_id = jobs.submit(client, command, runtime_env, args.submission_id, args.num_cpus, args.num_gpus)
    print(f"submitted job {job_id} to {client.get_address()}: {jobs.entrypoint(command)}", flush=True)
    if args.no_wait:
        print(f"follow it: fusionline jobs logs {job_id} --follow; stop it: fusionline jobs stop {job_id}")
        return 0
    return _follow_to_the_end(client, job_id)


def _follow_to_the_end(client: JobSubmissionClient, job_id: str) -> int:
    """Print the job's logs until it ends, then how it ended; its exit status (130 when Ctrl-C stops following)."""
    jobs = _jobs_module()

    try:
        info = jobs.follow(client, job_id, lambda chunk: print(chunk, end="", flush=True))
    except KeyboardInterrupt:
        print(f"\nstopped following job {job_id}; it goes on (fusionline jobs stop {job_id} stops it)",
              file=sys.stderr)
        return 130
    status = jobs.exit_status(info)
    print(jobs.outcome(info), file=sys.stderr if status else sys.stdout)
    return status


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--env {text!r}: not KEY=VALUE")
    return key, value


def cmd_jobs_list(args: argparse.Namespace) -> None:
    jobs = _jobs_module()

    print(jobs.format_jobs(jobs.list_jobs(jobs.job_client(args.address))))


def cmd_jobs_logs(args: argparse.Namespace) -> int | None:
    jobs = _jobs_module()

    client = jobs.job_client(args.address)
    if args.follow:
        return _follow_to_the_end(client, args.job_id)
    jobs.job_info(client, args.job_id)
    print(client.get_job_logs(args.job_id), end="")
    return None


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    jobs = _jobs_module()

    client = jobs.job_client(args.address)
    if (info := jobs.job_info(client, args.job_id)).status.is_terminal():
        print(jobs.outcome(info), "(nothing to stop)")
        return 1
    client.stop_job(args.job_id)
    print(jobs.outcome(jobs.wait(client, args.job_id)))
    return 0


def cmd_jobs_down(args: argparse.Namespace) -> int:
    jobs = _jobs_module()

    head = jobs.LocalHead.load()
    if head is None:
        print(f"no local Ray head running (none recorded in {jobs.head_state_path()})")
        return 1
    print(f"stopping the local Ray head (pid {head.pid}, {head.address}) ...", flush=True)
    head.stop()
    jobs.head_state_path().unlink(missing_ok=True)
    print(f"stopped; its logs stay in {head.temp_dir}")
    return 0


def add_replica_flags(p: argparse.ArgumentParser, replicas: int, runtimes: tuple[str, ...] | None = None) -> None:
    """``--replicas``, ``--gpus-per-replica`` and ``--runtime``: how a line's model replicas are hosted
    (:class:`pipelines.replicas.ReplicaPool`); ``runtimes`` the ones the line offers (default: all)."""
    from model.runtimes import RUNTIMES

    p.add_argument("--replicas", type=int, default=replicas,
                   help="model replicas (Ray actors; one CPU core each, or a share of a GPU where the cluster has "
                        "GPUs)")
    p.add_argument("--gpus-per-replica", type=float, default=None, metavar="SHARE",
                   help="GPUs each replica asks for (0.5: two replicas per GPU; above 1, whole GPUs); default: the "
                        "cluster's GPUs shared evenly by the replicas, none without GPUs. A request the cluster "
                        "cannot place fails at once")
    p.add_argument("--runtime", choices=runtimes or RUNTIMES, default="eager",
                   help="what runs the model: eager (PyTorch), bf16 (PyTorch under bf16 autocast; for CPUs with "
                        "AVX-512 BF16 or AMX), onnx (ONNX Runtime fp32) or int8 (ONNX Runtime, static INT8); onnx and "
                        "int8 read the files `fusionline export` wrote into the model folder")


def add_dashboard_flags(p: argparse.ArgumentParser, with_db: bool = True) -> None:
    if with_db:
        p.add_argument("--db", type=Path, default=Path("runs/audit.db"), help="SQLite audit store to read")
    p.add_argument("--host", default="127.0.0.1", help="address the dashboard binds (loopback by default)")
    p.add_argument("--port", type=int, default=8501, help="dashboard port")
    p.add_argument("--password-env", metavar="VAR", default=None,
                   help="ask for the password held in environment variable VAR before showing anything "
                        "(the password never goes on the command line)")


def add_demo_dashboard_flags(p: argparse.ArgumentParser) -> None:
    """A line's ``demo``: ``--no-dashboard``, and where the dashboard over the demo's audit store is served."""
    p.add_argument("--no-dashboard", action="store_true", help="print the summary and exit")
    add_dashboard_flags(p, with_db=False)


def run_with_progress(line_name: str, compose: Callable[[Any], Line], cfg: Any, address: str | None, unit: str,
                      inputs: dict[str, str | None], endless: bool = False) -> LineReport:
    """Run a line of ``fusionline run|demo LINE`` to the end of its source, with a progress bar of ``unit``s.

    ``inputs`` (what -> path; None or empty: not given) must exist, else FileNotFoundError names the first one
    missing; then Ray is joined at ``address`` (a local Ray when None), ``compose(cfg)`` wires the line and its
    replicas are shut down once it has run. An ``endless`` source (a looping replay) has no total on the bar.
    """
    from tqdm import tqdm

    from pipelines.line import run_line
    from pipelines.runtime import connect_ray

    for what, path in inputs.items():
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{what} {path} does not exist")
    connect_ray(address)
    line = compose(cfg)
    total = len(line.source) if hasattr(line.source, "__len__") and not endless else None
    with tqdm(total=total, unit=unit, desc=f"{line_name} line") as bar:
        report = run_line(line, progress=lambda n: bar.update(n - bar.n))
    line.replicas.shutdown()
    return report


def format_summary(rows: list[tuple[str, str]], rule_beyond_keys: int) -> str:
    """A run's summary table: one ``key  value`` line per row, keys padded to the longest, between two rules
    ``rule_beyond_keys`` characters longer than the keys."""
    width = max(len(k) for k, _ in rows)
    rule = "─" * (width + rule_beyond_keys)
    return "\n".join([rule, *(f"{k:<{width}}  {v}" for k, v in rows), rule])


def cmd_plc_sim(args: argparse.Namespace) -> None:
    from connectors.modbus import PlcSimulator

    sim = PlcSimulator(args.host, args.port)
    print(f"PLC simulator (Modbus TCP) on {args.host}:{args.port}; register map: docs/plc-register-map.md")
    sim.run_forever()


def cmd_dashboard(args: argparse.Namespace) -> None:
    serve_dashboard(args.db, args.host, args.port, args.password_env, args.ray_address)


def serve_dashboard(db: Path, host: str, port: int, password_env: str | None = None,
                    ray_address: str | None = None) -> None:
    """Run Streamlit in the foreground (Ctrl-C stops it); the venv is kept out of its file watcher.

    With ``password_env`` the page asks for the password in that environment variable, which Streamlit
    inherits; only the variable's name goes on Streamlit's command line.
    """
    import os
    import subprocess

    if password_env is not None and not os.environ.get(password_env):
        raise ValueError(f"--password-env {password_env}: that environment variable is not set or empty")
    app = Path(__file__).resolve().parent.parent / "apps" / "dashboard.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host, "--server.port",
           str(port), "--server.headless", "true", "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", "--", "--db", str(db)]
    if ray_address is not None:
        cmd += ["--ray-address", ray_address]
    if password_env is not None:
        cmd += ["--password-env", password_env]
    elif host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the dashboard on {host} is reachable from other machines without a password "
              "(see --password-env)", file=sys.stderr)
    print(f"dashboard: http://{host}:{port}  (Ctrl-C to stop)")
    try:
        subprocess.run(cmd, check=False)
    except KeyboardInterrupt:
        pass


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from connectors.audit import verify

    report = verify(args.db)
    print(f"{args.db}: {report}", file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
