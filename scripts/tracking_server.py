"""A team MLflow tracking server on this machine: a private PostgreSQL cluster, served artifacts, logins.

    python scripts/tracking_server.py start            # or: make tracking-server
    python scripts/tracking_server.py status
    python scripts/tracking_server.py add-user NAME    # an account for a colleague; prints its password
    python scripts/tracking_server.py stop             # or: make tracking-server-stop

The server is MLflow's own, ``mlflow server --app-name basic-auth``, with the cluster as its
backend store and ``--artifacts-destination``; accounts are made with MLflow's client,
``mlflow.server.get_app_client("basic-auth")``. This script does what MLflow does not: it creates
the cluster and its databases once, writes the login app's settings and secrets, and starts and
stops PostgreSQL and MLflow in the background. Everything lives in one folder (TRACKING_DIR,
default ``.tracking/``) of mode 700, whose secrets are created with mode 600:

    pgdata/, postgres.log   the cluster (initdb, pg_ctl): TCP on 127.0.0.1 only, no Unix socket
    pgpass                  the generated database password, handed to MLflow through PGPASSFILE
    basic_auth.ini          MLflow's login settings (MLFLOW_AUTH_CONFIG_PATH), the admin password included
    flask-secret            MLflow's MLFLOW_FLASK_SERVER_SECRET_KEY
    artifacts/              the artifact store MLflow serves (unless TRACKING_ARTIFACTS names another)
    mlflow.pid, mlflow.url, mlflow.log   the running server: its process, its address, its output

As root, PostgreSQL's programs run as the ``postgres`` user (they refuse to run as root), so the
folder belongs to that user and its parents must be reachable by it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from configparser import ConfigParser
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DB_USER = "mlflow"
DATABASES = ("mlflow", "mlflow_auth")  # runs and models; MLflow's accounts and permissions
ADMIN_USER = "admin"
# What an account may do with experiments and models it did not create: the whole team works in
# one experiment and one registered model. READ keeps them to their own (then grant per user).
DEFAULT_PERMISSION = "EDIT"
START_TIMEOUT_S = 180  # the first start creates MLflow's schema: dozens of migrations
LOOPBACK_HOSTS = "localhost,localhost:*,127.0.0.1,127.0.0.1:*"
SETTINGS = """settings, as environment variables [default]:
  TRACKING_DIR            cluster, artifacts, logs and secrets [.tracking/ in the project]
  TRACKING_HOST           interface MLflow binds to; 0.0.0.0 serves other machines [127.0.0.1]
  TRACKING_PORT           MLflow's port [5000]
  TRACKING_ALLOWED_HOSTS  names colleagues reach MLflow by, e.g. tracking.example.com:5000
                          (replaces MLflow's default of loopback and private IPs; loopback is kept)
  TRACKING_PG_PORT        PostgreSQL's port, on 127.0.0.1 [5433: Debian's own cluster keeps 5432]
  TRACKING_ARTIFACTS      artifact store: a folder, s3://, gs://, wasbs:// [$TRACKING_DIR/artifacts]
  TRACKING_WORKERS        MLflow server worker processes [2]"""


class ServerError(Exception):
    """A step failed; the message says which and what to do."""


def settings() -> argparse.Namespace:
    env = os.environ.get
    root = Path(env("TRACKING_DIR") or PROJECT_ROOT / ".tracking").resolve()
    return argparse.Namespace(
        root=root,
        host=env("TRACKING_HOST") or "127.0.0.1",
        port=int(env("TRACKING_PORT") or 5000),
        allowed_hosts=env("TRACKING_ALLOWED_HOSTS"),
        pg_port=int(env("TRACKING_PG_PORT") or 5433),
        artifacts=env("TRACKING_ARTIFACTS") or str(root / "artifacts"),
        workers=int(env("TRACKING_WORKERS") or 2),
    )


def write_secret(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only from the first byte on (no chmod after the fact)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


# --- PostgreSQL -----------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The folder holding initdb and pg_ctl: $PG_BIN, else on PATH, else Debian's newest version."""
    if os.environ.get("PG_BIN"):
        candidates = [Path(os.environ["PG_BIN"])]
    elif shutil.which("initdb"):
        candidates = [Path(shutil.which("initdb")).parent]
    else:  # Debian keeps server programs off PATH, in /usr/lib/postgresql/<major>/bin
        found = Path("/usr/lib/postgresql").glob("*/bin")
        candidates = sorted(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)], reverse=True)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise ServerError(
        "PostgreSQL server programs (initdb, pg_ctl) not found. Install PostgreSQL "
        "(Debian/Ubuntu: `sudo apt-get install postgresql`, or `sudo scripts/ensure-postgresql.sh`) "
        "or point PG_BIN at the folder that holds them."
    )


def as_postgres(*command: str | Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, its programs run as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--"] * (os.geteuid() == 0) + [str(part) for part in command]


def give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def pg(root: Path, tool: str, *args: str | Path, what: str) -> None:
    result = subprocess.run(as_postgres(postgres_bin() / tool, *args), capture_output=True, text=True)
    if result.returncode != 0:
        log = root / "postgres.log"
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-20:]) if log.exists() else ""
        raise ServerError(f"{what} failed:\n{(result.stderr or result.stdout).strip()}\n{tail}")


def pg_running(root: Path) -> bool:
    if not (root / "pgdata" / "PG_VERSION").exists():
        return False
    status = as_postgres(postgres_bin() / "pg_ctl", "status", "-D", root / "pgdata")
    return subprocess.run(status, capture_output=True).returncode == 0


def create_cluster(root: Path) -> None:
    """The folder and, once, the cluster in it: SCRAM passwords over TCP on 127.0.0.1, no Unix socket."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    give_to_postgres(root)
    if subprocess.run(as_postgres("test", "-x", root)).returncode != 0:
        raise ServerError(
            f"{root} is not reachable by the postgres user (PostgreSQL runs as that user when started by "
            "root): choose a TRACKING_DIR whose parent folders are world-executable, e.g. under /srv or /tmp"
        )
    pgdata = root / "pgdata"
    if (pgdata / "PG_VERSION").exists():
        return
    shutil.rmtree(pgdata, ignore_errors=True)  # what is there is a failed initdb; its password went with it
    password = secrets.token_urlsafe(24)
    write_secret(root / "pgpass", f"127.0.0.1:*:*:{DB_USER}:{password}\n")  # libpq ignores one others can read
    write_secret(pwfile := root / "initdb-password", password + "\n")
    give_to_postgres(pwfile)
    try:
        options = "--auth-host=scram-sha-256 --auth-local=reject --encoding=UTF8 --no-instructions".split()
        pg(root, "initdb", "-D", pgdata, "-U", DB_USER, f"--pwfile={pwfile}", *options, what="initdb")
    finally:
        pwfile.unlink()
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\n# scripts/tracking_server.py\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")


def start_postgres(root: Path, port: int) -> None:
    """The cluster running on ``port``, with MLflow's two databases in it."""
    if not pg_running(root):
        (log := root / "postgres.log").touch()
        give_to_postgres(log)
        what = f"starting PostgreSQL on 127.0.0.1:{port} (is the port taken? choose another TRACKING_PG_PORT)"
        pg(root, "pg_ctl", "start", "-D", root / "pgdata", "-l", log, "-o", f"-p {port}", "-w", what=what)
    try:
        import psycopg  # here, so that `stop` and `status` work without it
    except ImportError:
        raise ServerError("MLflow needs the psycopg driver for PostgreSQL: pip install -e '.[team]'") from None
    login = dict(host="127.0.0.1", port=port, user=DB_USER, passfile=str(root / "pgpass"))
    with psycopg.connect(dbname="postgres", autocommit=True, **login) as conn:
        for name in DATABASES:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')


def stop_postgres(root: Path) -> None:
    if pg_running(root):
        pg(root, "pg_ctl", "stop", "-D", root / "pgdata", "-m", "fast", "-w", what="stopping PostgreSQL")


# --- MLflow ---------------------------------------------------------------------------------


def healthy(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def server_pid(root: Path) -> int | None:
    """The pid in ``mlflow.pid`` if that process still runs (a zombie waiting to be reaped does not)."""
    try:
        pid = int((root / "mlflow.pid").read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    stat = Path(f"/proc/{pid}/stat")
    return None if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z" else pid


def auth_config(root: Path, pg_port: int) -> Path:
    """MLflow's login settings: accounts in the cluster's ``mlflow_auth``, a generated admin password."""
    path = root / "basic_auth.ini"
    config = ConfigParser(interpolation=None)
    config.read(path)  # keeps the admin password: MLflow reads it only to create the admin, on the first start
    config["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": f"postgresql+psycopg://{DB_USER}@127.0.0.1:{pg_port}/mlflow_auth",
        "admin_username": ADMIN_USER,
        "admin_password": config.get("mlflow", "admin_password", fallback="") or secrets.token_urlsafe(24),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # A password check is a deliberately slow hash, and a run makes hundreds of requests: each
        # worker remembers a checked login this long (a changed password is refused within it).
        "auth_cache_ttl_seconds": "60",
    }
    text = io.StringIO()
    config.write(text)
    write_secret(path, text.getvalue())
    return path


def start_mlflow(root: Path, s: argparse.Namespace) -> str:
    """``mlflow server`` in a session of its own (it outlives this script), once it answers /health."""
    url = f"http://{'127.0.0.1' if s.host == '0.0.0.0' else s.host}:{s.port}"
    if healthy(url):
        raise ServerError(f"something already answers at {url}: stop it, or choose another TRACKING_PORT")
    flask_secret = root / "flask-secret"
    if not flask_secret.exists():
        write_secret(flask_secret, secrets.token_urlsafe(24))
    # Secrets reach MLflow through files and the environment, never the command line.
    env = dict(
        os.environ,
        PGPASSFILE=str(root / "pgpass"),
        MLFLOW_AUTH_CONFIG_PATH=str(auth_config(root, s.pg_port)),
        MLFLOW_FLASK_SERVER_SECRET_KEY=flask_secret.read_text().strip(),
    )
    # The pipeline uses none of MLflow's server-side jobs (GenAI evaluation and the like), whose
    # runner is a pool of a few Python processes of its own; set it to true to have them.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    backend = f"postgresql+psycopg://{DB_USER}@127.0.0.1:{s.pg_port}/mlflow"
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri", backend]
    command += ["--artifacts-destination", s.artifacts, "--host", s.host, "--port", str(s.port)]
    command += ["--workers", str(s.workers)]
    if s.allowed_hosts:  # it replaces MLflow's default (loopback and private IPs): keep loopback
        command += ["--allowed-hosts", f"{s.allowed_hosts},{LOOPBACK_HOSTS}"]
    with (root / "mlflow.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=root, start_new_session=True)
    (root / "mlflow.pid").write_text(f"{process.pid}\n")
    (root / "mlflow.url").write_text(f"{url}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        if healthy(url):
            return url
        time.sleep(1)
    stop_mlflow(root)
    tail = "".join((root / "mlflow.log").read_text(errors="replace").splitlines(True)[-30:])
    raise ServerError(f"mlflow server did not become healthy at {url} within {START_TIMEOUT_S}s; mlflow.log:\n{tail}")


def stop_mlflow(root: Path) -> bool:
    """End the server's session (``mlflow server`` and its workers): SIGTERM, after 30 s SIGKILL."""
    pid = server_pid(root)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(60):
                if server_pid(root) is None:
                    break
                time.sleep(0.5)
            else:
                os.killpg(pid, signal.SIGKILL)
    (root / "mlflow.pid").unlink(missing_ok=True)
    return pid is not None


def running_url(root: Path) -> str:
    if server_pid(root) is None or not (root / "mlflow.url").exists():
        raise ServerError(f"no tracking server is running from {root}: start it first")
    return (root / "mlflow.url").read_text().strip()


# --- commands -------------------------------------------------------------------------------


def start(s: argparse.Namespace, name: str | None) -> None:
    root = s.root
    if server_pid(root) is not None:
        if healthy(url := running_url(root)):
            print(f"already running: export MLFLOW_TRACKING_URI={url}")
            return
        stop_mlflow(root)  # running but not answering: start afresh
    postgres_bin()  # before anything is created: says how to install PostgreSQL
    create_cluster(root)
    start_postgres(root, s.pg_port)
    try:
        url = start_mlflow(root, s)
    except BaseException:
        stop_postgres(root)
        raise
    print(f"MLflow tracking server on {url} (PostgreSQL on 127.0.0.1:{s.pg_port}, artifacts in {s.artifacts})")
    print(f"logins required: user {ADMIN_USER}, password in {root / 'basic_auth.ini'} (admin_password)")
    print(f"export MLFLOW_TRACKING_URI={url}")


def stop(s: argparse.Namespace, name: str | None) -> None:
    stopped = stop_mlflow(s.root)
    stop_postgres(s.root)
    print(f"stopped the tracking server in {s.root}" if stopped else f"no tracking server was running from {s.root}")


def status(s: argparse.Namespace, name: str | None) -> None:
    url = running_url(s.root)
    ok = healthy(url)
    print(f"{url}: {'healthy' if ok else 'NOT answering'}; PostgreSQL {'up' if pg_running(s.root) else 'DOWN'}")
    sys.exit(0 if ok else 1)


def add_user(s: argparse.Namespace, name: str | None) -> None:
    """An account on the running server, made as its admin with MLflow's client; the password is generated."""
    if not name:
        raise ServerError("add-user needs the new account's name: tracking_server.py add-user NAME")
    url = running_url(s.root)
    config = ConfigParser(interpolation=None)
    config.read(s.root / "basic_auth.ini")
    # MLflow's clients log in with these variables.
    os.environ["MLFLOW_TRACKING_USERNAME"] = config["mlflow"]["admin_username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = config["mlflow"]["admin_password"]
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    password = secrets.token_urlsafe(18)
    try:
        get_app_client("basic-auth", tracking_uri=url).create_user(name, password)
    except MlflowException as exc:
        raise ServerError(f"creating the account {name!r} failed: {exc.message.splitlines()[0]}") from None
    print(f"account {name!r} created on {url}; hand these over privately:")
    print(f"export MLFLOW_TRACKING_USERNAME={name}")
    print(f"export MLFLOW_TRACKING_PASSWORD={password}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=SETTINGS, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("start", "stop", "status", "add-user"))
    parser.add_argument("name", nargs="?", help="add-user: the new account's name")
    args = parser.parse_args(argv)
    commands = {"start": start, "stop": stop, "status": status, "add-user": add_user}
    try:
        commands[args.command](settings(), args.name)
    except ServerError as exc:
        print(f"tracking-server: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
