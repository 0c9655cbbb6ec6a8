"""A team MLflow tracking server: PostgreSQL backend store, served artifact store, logins, on loopback.

    python scripts/tracking_server.py start    # or: make tracking-server
    python scripts/tracking_server.py status
    python scripts/tracking_server.py add-user NAME   # an account for a colleague; prints its password
    python scripts/tracking_server.py stop     # or: make tracking-server-stop

Everything lives in one folder (``--dir``, default ``.tracking/`` in the project):

    pgdata/          a private PostgreSQL cluster (initdb), listening on 127.0.0.1 only, no Unix socket
    pgpass           the generated database password (mode 600), handed to MLflow through PGPASSFILE
    admin-password   the generated password of MLflow's ``admin`` account (mode 600): every client
                     must log in (MLflow's basic-auth app); the admin creates colleagues' accounts
    basic_auth.ini, flask-secret   the login app's settings (users live in the database ``mlflow_auth``)
    artifacts/       the artifact store MLflow serves (``--artifacts-destination``; may be s3://... instead)
    postgres.log, mlflow.log, server.json (what is running, for stop and status)

A private cluster rather than Debian's ``main`` one: it needs no system-wide configuration,
any number can run side by side on free ports (the tests start their own), and deleting
the folder removes every trace. The folder is mode 700 and the secrets in it are created
with mode 600 (never readable by others, not even for a moment). As root, PostgreSQL's
programs run as the ``postgres`` user (they refuse to run as root), so the folder belongs
to that user and its parents must be reachable by it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATABASE = "mlflow"
AUTH_DATABASE = "mlflow_auth"  # MLflow's users and permissions
DB_USER = "mlflow"
ADMIN_USER = "admin"
# What an account may do with experiments and models it did not create: the whole team works in
# one experiment and one registered model. READ keeps them to their own (then grant per user).
DEFAULT_PERMISSION = "EDIT"
AUTH_CACHE_S = 60
START_TIMEOUT_S = 180  # the first start creates MLflow's schema: ~30 migrations, slow on a small machine
STOP_TIMEOUT_S = 30
LOOPBACK_HOSTS = "localhost,localhost:*,127.0.0.1,127.0.0.1:*"


class ServerError(Exception):
    """A step of starting or stopping failed; the message says which and what to do."""


@dataclass
class Layout:
    root: Path

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def pgpass(self) -> Path:
        return self.root / "pgpass"

    @property
    def admin_password(self) -> Path:
        return self.root / "admin-password"

    @property
    def flask_secret(self) -> Path:
        return self.root / "flask-secret"

    @property
    def auth_config(self) -> Path:
        return self.root / "basic_auth.ini"

    @property
    def postgres_log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def mlflow_log(self) -> Path:
        return self.root / "mlflow.log"

    @property
    def state(self) -> Path:
        return self.root / "server.json"


@dataclass
class State:
    """What ``start`` launched, so that ``stop`` and ``status`` (and tests) can find it."""

    tracking_uri: str
    backend_store_uri: str
    artifacts_destination: str
    mlflow_pid: int
    pg_port: int
    pgpass: str
    admin_user: str = ADMIN_USER
    admin_password_file: str = ""

    @classmethod
    def load(cls, path: Path) -> State | None:
        return cls(**json.loads(path.read_text())) if path.exists() else None


def write_secret(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only from the first byte on (no chmod after the fact)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def secret(path: Path) -> str:
    """The secret stored in ``path``, generated on first use."""
    if not path.exists():
        write_secret(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def private_folder(root: Path) -> None:
    """``root`` with mode 700; as root, owned by the postgres user, which must reach the cluster in it."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    give_to_postgres_user(root)
    if os.geteuid() == 0:
        reachable = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(root)])
        if reachable.returncode != 0:
            raise ServerError(
                f"{root} is not reachable by the postgres user (PostgreSQL runs as that user when "
                "started by root): choose a --dir whose parent folders are world-executable, e.g. under /srv or /tmp"
            )


# --- PostgreSQL -----------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The folder holding initdb and pg_ctl: $PG_BIN, else on PATH, else Debian's newest version."""
    if os.environ.get("PG_BIN"):
        candidates = [Path(os.environ["PG_BIN"])]
    elif shutil.which("initdb"):
        candidates = [Path(shutil.which("initdb")).parent]
    else:
        # Debian keeps server programs off PATH, in /usr/lib/postgresql/<major>/bin.
        installed = Path("/usr/lib/postgresql").glob("*/bin")
        candidates = sorted(installed, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)], reverse=True)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise ServerError(
        "PostgreSQL server programs (initdb, pg_ctl) not found. Install PostgreSQL "
        "(Debian/Ubuntu: `sudo apt-get install postgresql`, or `sudo scripts/ensure-postgresql.sh`) "
        "or point PG_BIN at the folder that holds them."
    )


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the ``postgres`` user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def give_to_postgres_user(*paths: Path) -> None:
    if os.geteuid() == 0:
        for path in paths:
            shutil.chown(path, "postgres", "postgres")


def run_checked(command: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        if log is not None and log.exists():
            detail += "\n" + "".join(log.read_text(errors="replace").splitlines(True)[-20:])
        raise ServerError(f"{what} failed ({' '.join(command)}):\n{detail}")


def init_cluster(layout: Layout, pg_bin: Path) -> None:
    """Create the cluster once: password auth over TCP on 127.0.0.1, no Unix socket."""
    if (layout.pgdata / "PG_VERSION").exists():
        return
    password = secrets.token_urlsafe(24)
    # No PG_VERSION: what is there is a failed initdb, and its password went with it.
    layout.pgpass.unlink(missing_ok=True)
    write_secret(layout.pgpass, f"127.0.0.1:*:*:{DB_USER}:{password}\n")  # libpq ignores one others can read
    shutil.rmtree(layout.pgdata, ignore_errors=True)
    layout.pgdata.mkdir(mode=0o700)
    pwfile = layout.root / "initdb-password"
    pwfile.unlink(missing_ok=True)
    write_secret(pwfile, password + "\n")
    give_to_postgres_user(layout.pgdata, pwfile)
    try:
        run_checked(
            as_postgres_user(
                [
                    str(pg_bin / "initdb"),
                    "-D",
                    str(layout.pgdata),
                    "-U",
                    DB_USER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=reject",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            ),
            "initdb",
        )
    finally:
        pwfile.unlink()
    with (layout.pgdata / "postgresql.conf").open("a") as conf:
        # Loopback only, TCP only: nothing outside this machine, and no socket folder to own.
        conf.write("\n# scripts/tracking_server.py\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")


def postgres_running(layout: Layout, pg_bin: Path) -> bool:
    status = subprocess.run(
        as_postgres_user([str(pg_bin / "pg_ctl"), "status", "-D", str(layout.pgdata)]), capture_output=True
    )
    return status.returncode == 0


def start_postgres(layout: Layout, pg_bin: Path, port: int) -> None:
    if postgres_running(layout, pg_bin):
        return
    layout.postgres_log.touch()
    give_to_postgres_user(layout.postgres_log)
    run_checked(
        as_postgres_user(
            [
                str(pg_bin / "pg_ctl"),
                "start",
                "-D",
                str(layout.pgdata),
                "-l",
                str(layout.postgres_log),
                "-o",
                f"-p {port}",
                "-w",
                "-t",
                "60",
            ]
        ),
        f"starting PostgreSQL on 127.0.0.1:{port} (is the port taken? choose another with --pg-port)",
        layout.postgres_log,
    )


def stop_postgres(layout: Layout, pg_bin: Path) -> None:
    if (layout.pgdata / "PG_VERSION").exists() and postgres_running(layout, pg_bin):
        run_checked(
            as_postgres_user([str(pg_bin / "pg_ctl"), "stop", "-D", str(layout.pgdata), "-m", "fast", "-w"]),
            "stopping PostgreSQL",
        )


def connect_postgres(layout: Layout, port: int, dbname: str):
    try:
        import psycopg  # imported here so that `stop` and `status` work without it
    except ImportError:
        raise ServerError("MLflow needs the psycopg driver for PostgreSQL: pip install -e '.[team]'") from None
    return psycopg.connect(
        host="127.0.0.1", port=port, user=DB_USER, dbname=dbname, passfile=str(layout.pgpass), autocommit=True
    )


def create_databases(layout: Layout, port: int) -> None:
    with connect_postgres(layout, port, "postgres") as conn:
        for name in (DATABASE, AUTH_DATABASE):
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')


# --- MLflow ---------------------------------------------------------------------------------


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow(layout: Layout, args: argparse.Namespace, backend_uri: str, artifacts: str) -> int:
    url = f"http://{args.host}:{args.port}"
    if healthy(url):
        raise ServerError(f"something already answers at {url}: stop it, or choose another --port")
    layout.auth_config.unlink(missing_ok=True)
    write_secret(
        layout.auth_config,
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = postgresql+psycopg://{DB_USER}@127.0.0.1:{args.pg_port}/{AUTH_DATABASE}\n"
        f"admin_username = {ADMIN_USER}\n"
        # Checking a password costs a deliberately slow hash; a run makes hundreds of requests.
        # A changed password reaches the other workers within this many seconds.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n",
    )
    # Passwords and keys reach MLflow through the environment, never the command line or a shared file.
    env = dict(
        os.environ,
        PGPASSFILE=str(layout.pgpass),
        MLFLOW_AUTH_CONFIG_PATH=str(layout.auth_config),
        MLFLOW_AUTH_ADMIN_PASSWORD=secret(layout.admin_password),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secret(layout.flask_secret),
    )
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",  # every request must carry an account's user name and password
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts,  # clients up- and download artifacts through the server
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
    ]
    if args.allowed_hosts:
        # MLflow answers only Host headers it knows; the list replaces its default (loopback and
        # private IPs), so keep loopback in it for this machine's own clients.
        command += ["--allowed-hosts", f"{args.allowed_hosts},{LOOPBACK_HOSTS}"]
    with layout.mlflow_log.open("ab") as log:
        # A session of its own, so that stop ends the server and all of its workers together.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=layout.root
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if healthy(url.replace("0.0.0.0", "127.0.0.1")):
            return process.pid
        if process.poll() is not None:
            break
        time.sleep(0.5)
    stop_process_group(process.pid)
    tail = "".join(layout.mlflow_log.read_text(errors="replace").splitlines(True)[-30:])
    raise ServerError(
        f"mlflow server did not become healthy at {url} within {START_TIMEOUT_S}s; {layout.mlflow_log}:\n{tail}"
    )


def stop_process_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


# --- commands -------------------------------------------------------------------------------


def start(args: argparse.Namespace) -> None:
    layout = Layout(args.dir.resolve())
    state = State.load(layout.state)
    if state is not None and healthy(state.tracking_uri):
        print(f"already running: export MLFLOW_TRACKING_URI={state.tracking_uri}")
        return
    pg_bin = postgres_bin()
    private_folder(layout.root)
    init_cluster(layout, pg_bin)
    start_postgres(layout, pg_bin, args.pg_port)
    try:
        create_databases(layout, args.pg_port)
        artifacts = args.artifacts_destination or str(layout.root / "artifacts")
        backend_uri = f"postgresql+psycopg://{DB_USER}@127.0.0.1:{args.pg_port}/{DATABASE}"
        pid = start_mlflow(layout, args, backend_uri, artifacts)
    except BaseException:
        stop_postgres(layout, pg_bin)
        raise
    uri = f"http://{'127.0.0.1' if args.host == '0.0.0.0' else args.host}:{args.port}"
    layout.state.write_text(
        json.dumps(
            asdict(
                State(
                    uri,
                    backend_uri,
                    artifacts,
                    pid,
                    args.pg_port,
                    str(layout.pgpass),
                    ADMIN_USER,
                    str(layout.admin_password),
                )
            ),
            indent=2,
        )
    )
    print(f"MLflow tracking server on {uri} (PostgreSQL 127.0.0.1:{args.pg_port}, artifacts in {artifacts})")
    print(f"logins required: user {ADMIN_USER}, password in {layout.admin_password}; accounts: see README")
    print(f"export MLFLOW_TRACKING_URI={uri}")


def stop(args: argparse.Namespace) -> None:
    layout = Layout(args.dir.resolve())
    state = State.load(layout.state)
    if state is not None:
        stop_process_group(state.mlflow_pid)
        layout.state.unlink()
    if (layout.pgdata / "PG_VERSION").exists():
        stop_postgres(layout, postgres_bin())
    print(
        f"stopped the tracking server in {layout.root}"
        if state
        else f"no tracking server was running from {layout.root}"
    )


def status(args: argparse.Namespace) -> None:
    layout = Layout(args.dir.resolve())
    state = State.load(layout.state)
    if state is None:
        print(f"not running (no {layout.state})")
        sys.exit(3)
    ok = healthy(state.tracking_uri)
    print(
        f"{state.tracking_uri}: {'healthy' if ok else 'NOT answering'}; "
        f"backend {state.backend_store_uri}; artifacts {state.artifacts_destination}"
    )
    sys.exit(0 if ok else 1)


def add_user(args: argparse.Namespace) -> None:
    """An account on the running server, created by its admin, with a generated password."""
    if not args.name:
        raise ServerError("add-user needs the new account's name: tracking_server.py add-user NAME")
    layout = Layout(args.dir.resolve())
    state = State.load(layout.state)
    if state is None or not healthy(state.tracking_uri):
        raise ServerError(f"no tracking server is running from {layout.root}: start it first")
    password = secrets.token_urlsafe(18)
    admin = base64.b64encode(f"{state.admin_user}:{secret(layout.admin_password)}".encode()).decode()
    request = urllib.request.Request(
        f"{state.tracking_uri}/api/2.0/mlflow/users/create",
        json.dumps({"username": args.name, "password": password}).encode(),
        {"Content-Type": "application/json", "Authorization": f"Basic {admin}"},
    )
    try:
        urllib.request.urlopen(request, timeout=30).close()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise ServerError(f"creating the account {args.name!r} failed: HTTP {exc.code} {detail}") from None
    print(f"account {args.name!r} created on {state.tracking_uri}; hand these over privately:")
    print(f"export MLFLOW_TRACKING_USERNAME={args.name}")
    print(f"export MLFLOW_TRACKING_PASSWORD={password}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status", "add-user"))
    parser.add_argument("name", nargs="?", help="add-user: the new account's name")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(env("TRACKING_DIR", PROJECT_ROOT / ".tracking")),
        help="folder of the cluster, artifacts, logs and state (env TRACKING_DIR; default .tracking/)",
    )
    parser.add_argument(
        "--host",
        default=env("TRACKING_HOST", "127.0.0.1"),
        help="interface MLflow binds to (env TRACKING_HOST); 0.0.0.0 serves colleagues, see README",
    )
    parser.add_argument(
        "--port", type=int, default=int(env("TRACKING_PORT", "5000")), help="MLflow port (env TRACKING_PORT)"
    )
    parser.add_argument(
        "--pg-port",
        type=int,
        default=int(env("TRACKING_PG_PORT", "5433")),
        help="PostgreSQL port on 127.0.0.1 (env TRACKING_PG_PORT; 5433 leaves Debian's own cluster its 5432)",
    )
    parser.add_argument(
        "--artifacts-destination",
        default=env("TRACKING_ARTIFACTS"),
        help="where served artifacts are stored: a folder or s3://, gs://, wasbs:// (env TRACKING_ARTIFACTS)",
    )
    parser.add_argument(
        "--allowed-hosts",
        default=env("TRACKING_ALLOWED_HOSTS"),
        help="names colleagues reach MLflow by, e.g. tracking.example.com:5000 (env TRACKING_ALLOWED_HOSTS; "
        "replaces MLflow's default of loopback and private IPs, loopback is kept)",
    )
    parser.add_argument(
        "--workers", type=int, default=int(env("TRACKING_WORKERS", "2")), help="MLflow server worker processes"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        {"start": start, "stop": stop, "status": status, "add-user": add_user}[args.command](args)
    except ServerError as exc:
        print(f"tracking-server: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
