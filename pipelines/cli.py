"""``fusionline`` — the command line.

``fusionline synth|train|eval|run|demo LINE`` are the registered lines' own verbs (:mod:`pipelines.lines`, each
line's ``cli.py``); the rest (``plc-sim``, ``dashboard``, ``audit``) serve every line. Every subcommand documents
every flag (``fusionline SUBCOMMAND [LINE] --help``). Heavy imports happen inside the subcommand that needs them,
so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipelines import lines

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
                line_parser = line_sub.add_parser(name, help=command.help, formatter_class=fmt)
                command.add_flags(line_parser)
                line_parser.set_defaults(func=command.run)
        if verb == "eval":
            add_recording_eval_flags(verb_parser)
            line_sub.required = False

    plc = sub.add_parser("plc-sim", help="emulate the PLC reject gate (Modbus TCP server)", formatter_class=fmt)
    plc.add_argument("--host", default="127.0.0.1", help="address to bind")
    plc.add_argument("--port", type=int, default=5020, help="TCP port (0: any free port)")
    plc.set_defaults(func=cmd_plc_sim)

    dash = sub.add_parser("dashboard", help="serve the Streamlit dashboard over an audit store",
                          formatter_class=fmt)
    add_dashboard_flags(dash)
    dash.set_defaults(func=cmd_dashboard)

    audit = sub.add_parser("audit", help="check the audit trail", formatter_class=fmt)
    audit_sub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    av = audit_sub.add_parser("verify", formatter_class=fmt,
                              help="recompute the audit store's hash chain; exit 0 when intact, 1 when tampered")
    av.add_argument("--db", type=Path, default=Path("runs/audit.db"), help="SQLite audit store to verify (read-only)")
    av.set_defaults(func=cmd_audit_verify)
    return parser


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


def add_dashboard_flags(p: argparse.ArgumentParser, with_db: bool = True) -> None:
    if with_db:
        p.add_argument("--db", type=Path, default=Path("runs/audit.db"), help="SQLite audit store to read")
    p.add_argument("--host", default="127.0.0.1", help="address the dashboard binds (loopback by default)")
    p.add_argument("--port", type=int, default=8501, help="dashboard port")
    p.add_argument("--password-env", metavar="VAR", default=None,
                   help="ask for the password held in environment variable VAR before showing anything "
                        "(the password never goes on the command line)")


def cmd_plc_sim(args: argparse.Namespace) -> None:
    from connectors.modbus import PlcSimulator

    sim = PlcSimulator(args.host, args.port)
    print(f"PLC simulator (Modbus TCP) on {args.host}:{args.port}; register map: docs/plc-register-map.md")
    sim.run_forever()


def cmd_dashboard(args: argparse.Namespace) -> None:
    serve_dashboard(args.db, args.host, args.port, args.password_env)


def serve_dashboard(db: Path, host: str, port: int, password_env: str | None = None) -> None:
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
