"""Ray jobs from the command line (``fusionline submit``, ``fusionline jobs``): a fusionline command submitted to a
Ray cluster's job server through the Jobs API, its logs followed, its end turned into an exit status; the jobs
listed, their logs read, one stopped; and a local Ray head of our own when no cluster is named.

::

    fusionline submit [--address http://HEAD:8265] -- fusionline rescore factory --archive /shared/rec --out /shared/out
      JobSubmissionClient(address).submit_job(
          entrypoint  "python -m pipelines.cli rescore factory ..."   (a leading `fusionline`, run from the upload)
          runtime_env working_dir: this checkout without data/, runs/, .git, .venv and caches (WORKING_DIR_EXCLUDES);
                      pip: what --pip names (packages or a requirements file); env_vars
          metadata    command: the command as typed; out: its --out, where the dashboard looks for summary.json)
      tail_job_logs  -> stdout, as the job prints
      the job's end  -> exit status: 0 SUCCEEDED, the command's own status when it FAILED, 1 otherwise

The job runs in a copy of the working directory on the cluster, so relative inputs resolve inside the upload and
relative outputs are written into that copy (lost with the cluster's session): name outputs, and inputs that are
not uploaded (``data/``), by paths every node sees (shared storage). ``python`` on the cluster must have
fusionline's dependencies: the cluster's image, or ``--pip requirements.lock``.

The jobs server's address is ``--address``, else ``$FUSIONLINE_RAY_ADDRESS``, else the local head
(:class:`LocalHead`) that an earlier ``fusionline submit`` started. That head is ``ray start --head --block``, the
leader of its own process group, with a temporary directory of its own (so ``ray.init()`` elsewhere on the machine
never joins it) and token authentication; its pid and address are kept in :func:`head_state_path`, and
:meth:`LocalHead.stop` stops exactly its processes (never ``ray stop``, which stops every Ray on the machine).

Token authentication (Ray >= 2.52) as Ray documents it: with ``RAY_AUTH_MODE=token`` the token (``RAY_AUTH_TOKEN``,
else the file at ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``) goes with every request; the local head always
gets it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

#: This checkout: the job's working directory unless the cluster has fusionline installed.
ROOT = Path(__file__).resolve().parents[1]

#: What the working-directory upload leaves out (gitignore patterns, relative to ROOT): data, outputs, the Python
#: environment, git history and caches. What remains is the code and tests/data (shipped models, small recordings).
WORKING_DIR_EXCLUDES = [".git/", ".venv", "venv/", "/data/", "/runs/", "/build/", "__pycache__/", ".pytest_cache/",
                        ".hypothesis/", "*.egg-info/", ".cache-*"]

#: Top-level folders of ROOT the upload leaves out: a relative path into one is not on the cluster.
NOT_UPLOADED = ("data", "runs", "build")

#: Environment variable naming the jobs server when no ``--address`` is given (the dashboard's jobs page too).
ADDRESS_ENV = "FUSIONLINE_RAY_ADDRESS"

#: The Ray dashboard's (and so the jobs server's) usual port.
JOBS_PORT = 8265

SUCCEEDED, FAILED, STOPPED = "SUCCEEDED", "FAILED", "STOPPED"

#: What ``ray start --head`` prints once its node runs (GCS, raylet and agents up).
RAY_STARTED = "Ray runtime started."


class NoJobsServer(ConnectionError):
    """No jobs server named and no local head running; the message says how to name or start one."""


def head_state_path() -> Path:
    """Where the local head's pid and address are kept: ``$XDG_CACHE_HOME/fusionline/ray-head.json``
    (``~/.cache`` without ``XDG_CACHE_HOME``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fusionline" / "ray-head.json"


def auth_token(env: dict[str, str] | None = None) -> str | None:
    """The Ray token in ``env`` (default: this process's): ``RAY_AUTH_TOKEN``, else the file at
    ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``; None when there is none."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    path = Path(env["RAY_AUTH_TOKEN_PATH"]) if env.get("RAY_AUTH_TOKEN_PATH") else Path.home() / ".ray" / "auth_token"
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that nobody listens on right now."""
    from connectors.mqtt import free_port

    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class LocalHead:
    """A Ray head node of our own on this machine: ``ray start --head --block`` leading its own process group.

    Attributes:
        address: its jobs server (and dashboard), ``http://127.0.0.1:PORT``.
        pid: the ``ray start`` process (its process group's id too).
        temp_dir: its Ray temporary directory (session logs; ``head.log`` holds ``ray start``'s own output).
    """

    address: str
    pid: int
    temp_dir: str

    @classmethod
    def start(cls, jobs_port: int = JOBS_PORT, num_cpus: int | None = None, temp_dir: str | Path | None = None,
              env: dict[str, str] | None = None, timeout_s: float = 180.0, attempts: int = 3) -> LocalHead:
        """Start a head with its jobs server on ``jobs_port`` (0, or a port in use: any free one) and every other
        port free-chosen, so it runs beside other Ray instances; returns once its jobs server answers.

        ``env`` adds to this process's environment for the head (and so for its jobs). The head's ``PATH`` begins
        with this Python's ``bin`` folder, so a job's ``python`` is this Python. Token authentication is on; a token
        is generated (``ray get-auth-token --generate``: ``~/.ray/auth_token``) when none exists. A ``ray start``
        that gives up during its own start (it waits 30 s for its raylet, which a loaded machine can exceed) is
        started again, up to ``attempts`` times in all; RuntimeError with its log's end when none serves.
        """
        bin_dir = Path(sys.executable).parent
        head_env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token",
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        head_env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        head_env.setdefault("PYTHONUNBUFFERED", "1")  # head.log shows `ray start`'s progress as it happens
        # the raylet dies when the dashboard agent is not up within this; a loaded machine needs more than the default
        head_env.setdefault("RAY_agent_register_timeout_ms", "180000")
        if auth_token(head_env) is None:
            subprocess.run([str(bin_dir / "ray"), "get-auth-token", "--generate"], env=head_env, check=True,
                           stdout=subprocess.DEVNULL)
        temp = Path(temp_dir) if temp_dir is not None else Path(tempfile.mkdtemp(prefix="fusionline-ray-"))
        temp.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts):
            try:
                return cls._launch(bin_dir / "ray", head_env, temp, jobs_port, num_cpus, timeout_s)
            except RuntimeError as exc:
                print(f"{exc}\nstarting it again ({attempt + 1} of {attempts})", file=sys.stderr)
        return cls._launch(bin_dir / "ray", head_env, temp, jobs_port, num_cpus, timeout_s)

    @classmethod
    def _launch(cls, ray: Path, env: dict[str, str], temp: Path, jobs_port: int, num_cpus: int | None,
                timeout_s: float) -> LocalHead:
        """One ``ray start --head --block`` in its own session, its output appended to ``temp/head.log``; returns
        once it serves jobs (:meth:`_wait_until_serving`)."""
        names = ["port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                 "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port"]
        *free, spare = _free_ports(len(names) + 1)
        ports = dict(zip(names, free, strict=True))
        if not jobs_port or not _port_free(jobs_port):
            jobs_port = spare
        command = [str(ray), "start", "--head", "--block", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={jobs_port}", f"--temp-dir={temp}", "--disable-usage-stats",
                   *(f"--{name}={port}" for name, port in ports.items())]
        if num_cpus is not None:
            command.append(f"--num-cpus={num_cpus}")
        log = temp / "head.log"
        with open(log, "ab") as out:
            since = out.tell()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        head = cls(f"http://127.0.0.1:{jobs_port}", process.pid, str(temp))
        head._wait_until_serving(process, log, since, timeout_s, auth_token(env))
        return head

    def _wait_until_serving(self, process: subprocess.Popen, log: Path, since: int, timeout_s: float,
                            token: str | None) -> None:
        """Wait until ``ray start`` says (in ``log`` past byte ``since``) that its node runs (its raylet registered,
        so the job agent is up too) and the jobs server lists jobs; RuntimeError with the log's last lines when the
        head exits or the time runs out (the head is stopped then)."""
        from ray.job_submission import JobSubmissionClient

        headers = {"Authorization": f"Bearer {token}"} if token else None

        def output() -> str:
            with open(log, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")

        deadline = time.monotonic() + timeout_s
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if RAY_STARTED in output():
                    JobSubmissionClient(self.address, headers=headers).list_jobs()
                    return
            except (ConnectionError, RuntimeError):
                pass
            time.sleep(0.5)
        reason = f"exited with status {process.returncode}" if process.poll() is not None else \
            f"was not serving jobs after {timeout_s:.0f} s"
        self.stop()
        tail = "\n".join(output().splitlines()[-6:])
        raise RuntimeError(f"local Ray head (ray start --head, pid {self.pid}) {reason}; {log} ends:\n{tail}")

    def running(self) -> bool:
        """True while this head's ``ray start`` process lives (checked by pid and by its temporary directory on
        its command line, so a reused pid is never taken for it)."""
        import psutil

        try:
            return any(self.temp_dir in part for part in psutil.Process(self.pid).cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    def stop(self, drain_s: float = 45.0) -> None:
        """Stop this head and only it: SIGTERM to ``ray start``, which drains the node and ends the processes it
        started; then SIGKILL to whatever of its process group is left after ``drain_s``."""
        if self.running():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + drain_s
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.2)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # the group is empty: all gone
            pass
        try:
            os.waitpid(self.pid, os.WNOHANG)  # reap it when this process started it
        except ChildProcessError:
            pass

    def save(self, path: Path | None = None) -> Path:
        path = path or head_state_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | None = None) -> LocalHead | None:
        """The head recorded at ``path`` while it runs; None when none is recorded or it has ended."""
        path = path or head_state_path()
        try:
            head = cls(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None
        return head if head.running() else None


def job_client(address: str | None = None) -> JobSubmissionClient:
    """A client of the jobs server at ``address`` (``http://HEAD:8265``); None: ``$FUSIONLINE_RAY_ADDRESS``, else
    the running local head. Raises NoJobsServer when there is neither, ConnectionError when nothing answers."""
    from ray.job_submission import JobSubmissionClient

    token_auth = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address is None:
        head = LocalHead.load()
        if head is None:
            raise NoJobsServer(f"no Ray jobs server: give --address http://HEAD:{JOBS_PORT} (or set {ADDRESS_ENV}), "
                               "or start a local head with `fusionline submit -- COMMAND`")
        address, token_auth = head.address, True
    token = auth_token() if token_auth else None
    try:
        return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"} if token else None)
    except (ConnectionError, RuntimeError) as exc:
        raise ConnectionError(f"no Ray jobs server answers at {address}: {exc}") from None


def entrypoint(command: Sequence[str]) -> str:
    """The shell line a job runs for ``command``: a leading ``fusionline`` becomes ``python -m pipelines.cli`` (the
    uploaded checkout, with the cluster's Python); anything else runs as given."""
    if not command:
        raise ValueError("submit: no command to run (fusionline submit -- fusionline COMMAND ...)")
    head, *rest = command
    return shlex.join(["python", "-m", "pipelines.cli", *rest] if head == "fusionline" else list(command))


def flag_value(command: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``command`` (``--out DIR`` or ``--out=DIR``), None when absent."""
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def path_warnings(command: Sequence[str], uploaded: bool) -> list[str]:
    """What will not be where the command expects it on the cluster: a relative ``--out`` (written into the job's
    copy of the working directory) and relative paths into folders the upload leaves out."""
    warnings = []
    out = flag_value(command, "--out")
    if out is not None and not Path(out).is_absolute():
        warnings.append(f"--out {out} is relative: the job writes it inside its copy of the working directory on "
                        "the cluster; give a path every node sees (shared storage) to keep it")
    if uploaded:
        for arg in command[1:]:
            raw = arg.split("=", 1)[-1]
            value = Path(raw)
            if raw != out and not value.is_absolute() and value.parts[:1] in [(name,) for name in NOT_UPLOADED]:
                warnings.append(f"{value}: {value.parts[0]}/ is not uploaded with the working directory; give a path "
                                "the cluster can read")
    return warnings


def runtime_env(working_dir: Path | None = ROOT, pip: Sequence[str] = (),
                env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime environment: ``working_dir`` uploaded (without :data:`WORKING_DIR_EXCLUDES`; None: use
    what the cluster has installed), ``pip`` packages or requirements files, environment variables."""
    env: dict[str, Any] = {}
    if working_dir is not None:
        env.update(working_dir=str(working_dir), excludes=list(WORKING_DIR_EXCLUDES))
    if pip:
        env["pip"] = _pip_packages(pip)
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def _pip_packages(pip: Sequence[str]) -> list[str]:
    """Package specifications, a requirements file's lines read here (comments, options and blanks dropped)."""
    packages: list[str] = []
    for item in pip:
        path = Path(item)
        if path.is_file():
            lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
            packages += [line for line in lines if line and not line.startswith("-")]
        else:
            packages.append(item)
    return packages


def submission_id(command: Sequence[str]) -> str:
    """A readable, unique job id: ``fusionline-<verb>[-<line>]-<UTC time>-<4 hex>``."""
    words = [word for word in command[1:3] if not word.startswith("-")] if command[:1] == ["fusionline"] else \
        [Path(command[0]).name] if command else []
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return "-".join(["fusionline", *words, stamp, os.urandom(2).hex()])


def submit(client: JobSubmissionClient, command: Sequence[str], env: dict[str, Any], job_id: str | None = None,
           num_cpus: float | None = None, num_gpus: float | None = None, agent_wait_s: float = 120.0) -> str:
    """Submit ``command`` with the runtime environment ``env`` (:func:`runtime_env`); returns the job's id.
    ``num_cpus``/``num_gpus``: what the command's own process reserves (its Ray tasks and actors ask for theirs).
    A head whose job agent is not up yet (just started), or a connection dropped without an answer, is tried again
    for up to ``agent_wait_s``."""
    metadata = {"command": shlex.join(command)}
    out = flag_value(command, "--out")
    if out is not None:
        metadata["out"] = out
    import requests

    job_id = job_id or submission_id(command)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint(command), runtime_env=env, metadata=metadata,
                                     submission_id=job_id, entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus)
        except RuntimeError as exc:
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                continue  # a head just started: its job agent is not up yet (the server waits 10 s a try)
            if "already exists" in str(exc) and _submitted(client, job_id, entrypoint(command)):
                return job_id  # the try before, whose answer the connection lost, went through
            raise ValueError(f"submit {shlex.join(command)}: the jobs server refused it: {exc}") from None
        except requests.exceptions.ConnectionError:  # the server dropped the connection without an answer
            if time.monotonic() >= deadline:
                raise
            time.sleep(2.0)


def _submitted(client: JobSubmissionClient, job_id: str, line: str) -> bool:
    """True when the server holds job ``job_id`` running ``line``."""
    try:
        return client.get_job_info(job_id).entrypoint == line
    except RuntimeError:
        return False


def job_info(client: JobSubmissionClient, job_id: str) -> JobDetails:
    """The job's details; ValueError naming the job when the server does not know it."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        raise ValueError(f"job {job_id}: {exc}") from None


def wait(client: JobSubmissionClient, job_id: str, poll_s: float = 0.5) -> JobDetails:
    """Block until the job has ended (SUCCEEDED, FAILED or STOPPED); its final details."""
    while not (info := job_info(client, job_id)).status.is_terminal():
        time.sleep(poll_s)
    return info


def follow(client: JobSubmissionClient, job_id: str, write: Callable[[str], object]) -> JobDetails:
    """Pass the job's logs to ``write`` as it prints them, from its start to its end; its final details."""
    job_info(client, job_id)  # an unknown id: ValueError, not a websocket error

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())
    return wait(client, job_id)


def exit_status(info: JobDetails) -> int:
    """0 for a job that SUCCEEDED; for one that FAILED, its command's exit status (128 + N when signal N killed
    it), 1 when the command never ran; 1 for a STOPPED job."""
    if info.status == SUCCEEDED:
        return 0
    code = info.driver_exit_code if info.status == FAILED else None
    if code:
        return code if code > 0 else 128 - code
    return 1


def outcome(info: JobDetails) -> str:
    """One line saying how the job ended (its logs are already shown: their tail is not repeated)."""
    took = f" after {(info.end_time - info.start_time) / 1000:.1f} s" if info.end_time and info.start_time else ""
    if info.status == FAILED and info.driver_exit_code is not None:
        return f"job {info.submission_id} FAILED{took}: its command exited with status {info.driver_exit_code}"
    message = f": {info.message}" if info.message and info.status != SUCCEEDED else ""
    return f"job {info.submission_id} {info.status}{took}{message}"


def list_jobs(client: JobSubmissionClient) -> list[JobDetails]:
    """The submitted jobs (not drivers that joined the cluster themselves), oldest first."""
    jobs = [job for job in client.list_jobs() if job.submission_id]
    return sorted(jobs, key=lambda job: job.start_time or 0)


def format_jobs(jobs: Sequence[JobDetails], now_ms: float | None = None) -> str:
    """The table ``fusionline jobs list`` prints: id, status, start (UTC), duration, command."""
    if not jobs:
        return "no jobs submitted yet"
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    rows = [("ID", "STATUS", "STARTED (UTC)", "TOOK", "COMMAND")]
    for job in jobs:
        started = dt.datetime.fromtimestamp(job.start_time / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") \
            if job.start_time else "—"
        took = f"{((job.end_time or now_ms) - job.start_time) / 1000:.0f} s" if job.start_time else "—"
        rows.append((job.submission_id, str(job.status), started, took,
                     (job.metadata or {}).get("command", job.entrypoint)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)), row[4]])
                     for row in rows)
