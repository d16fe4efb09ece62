"""`make serve`: the production topology on one box, safe by default.

    python -m deploy.serve [--dry-run]

1. CARDCARE_ENV=production and umask 077 (databases, statements and media owner-only).
2. Preflight: refuses to start, naming the variable, while a secret is missing or still a
   development or sandbox value (cardsystem.preflight), or a variable the endpoints file
   needs is unset.
3. The WhatsApp ingress on 127.0.0.1:$INGRESS_PORT (connectors.whatsapp.ingress): takes webhooks
   into its journal on disk (var/ingress-journal) and answers, and its recorder (a child process)
   records them in the channel database, even while Rasa restarts; the action server on 127.0.0.1:$ACTION_PORT,
   refusing calls without CARDCARE_ACTION_SECRET.
4. $WORKERS Rasa workers (default 1) on 127.0.0.1:$RASA_PORT, $RASA_PORT+1, ... with
   credentials.production.yml (WhatsApp and statement files, no REST); their HTTP API off, or
   on with RASA_AUTH_TOKEN when RASA_ENABLE_API=1. They share the conversations (PostgreSQL
   tracker store), the locks (Redis) and the channel database, and take the customers the
   ingress recorded by lease: any worker answers any customer, one at a time, in order; each
   first its own share (CARDCARE_WORKER_SLOT), the others' when they have waited 5 s.
5. nginx (when installed) on $PUBLIC_HOST:$PUBLIC_PORT as the only public door
   (deploy/nginx.conf.template), spreading the console, statement and feedback routes over
   the workers.

A Rasa worker that dies is started again (the others and the ingress go on meanwhile: nothing
it held is lost, its customers are taken over when its leases lapse); one that keeps dying
(RESTARTS_ALLOWED in RESTART_WINDOW) or any other process that stops stops the whole set, and
this exits non-zero, so a process manager (systemd, a container runtime) restarts it.
`--dry-run` prints what would run.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import requests

from cardsystem.preflight import demo_accounts_usable, problems

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx.conf.template"
NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
TURN_NICENESS = 19  # the turns take what CPU the ingress, nginx and the databases leave (acks: p50 20 -> 11 ms against 5)
STARTUP_SECONDS = 600  # loading the model on a busy box
MAX_WORKERS = 16
# One thread each for TensorFlow's and the BLAS's pools in a worker, as the benchmark measures the
# workers (they were set only there): a worker's turns run one at a time on its event loop, and
# pool threads per core per worker would compete with the ingress, the other workers and
# PostgreSQL for a small box's cores. An operator's own values win.
TURN_THREADS = {"TF_INTRA_OP_PARALLELISM_THREADS": "1", "TF_INTER_OP_PARALLELISM_THREADS": "1",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
RESTARTS_ALLOWED = 5     # a Rasa worker started again this often within RESTART_WINDOW ...
RESTART_WINDOW = 600.0   # ... seconds keeps dying: stop the set, for the process manager to see
# Who reaches the agents' console by default: this box and private networks (the bank's own);
# CONSOLE_ALLOW=all opens it to the internet, or lists the bank's networks exactly.
PRIVATE_NETWORKS = "127.0.0.1 ::1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7"


def settings(env: Mapping[str, str]) -> Dict[str, str]:
    return {
        "RASA_PORT": env.get("RASA_PORT", "5005"),
        "WORKERS": env.get("WORKERS", "1"),
        "ACTION_PORT": env.get("ACTION_PORT", "5055"),
        "INGRESS_PORT": env.get("INGRESS_PORT", "5007"),
        "PUBLIC_PORT": env.get("PUBLIC_PORT", "8080"),
        "PUBLIC_HOST": env.get("PUBLIC_HOST", "0.0.0.0"),
        "ENDPOINTS": env.get("ENDPOINTS", "endpoints.production.yml"),
        "CREDENTIALS": env.get("CREDENTIALS", "credentials.production.yml"),
        "MODEL": env.get("MODEL", "models/cardcare.tar.gz"),
        "CONSOLE_ALLOW": env.get("CONSOLE_ALLOW", PRIVATE_NETWORKS),
        "RUN_DIR": env.get("NGINX_RUN_DIR", str(ROOT / "var" / "nginx")),
    }


def worker_ports(conf: Mapping[str, str]) -> List[int]:
    """The Rasa workers' ports: RASA_PORT and the next WORKERS-1."""
    return [int(conf["RASA_PORT"]) + n for n in range(int(conf["WORKERS"]))]


def worker_name(number: int) -> str:
    return "rasa" if number == 0 else f"rasa{number + 1}"


def production_env(base: Mapping[str, str]) -> Dict[str, str]:
    """The children's environment: production, with the local addresses filled in."""
    env = dict(base)
    conf = settings(env)
    env["CARDCARE_ENV"] = "production"
    env["WHATSAPP_INGRESS"] = "1"  # Rasa's channel answers what the ingress recorded
    # Sanic's access log would write statement links (bearer tokens) and ids; nginx keeps a redacted one
    env.setdefault("SANIC_ACCESS_LOG", "False")
    env.setdefault("ACTION_SERVER_URL", f"http://127.0.0.1:{conf['ACTION_PORT']}/webhook")
    env.setdefault("REDIS_DB", "1")  # (the locks' Redis database and key prefix: endpoints.production.yml)
    env.setdefault("REDIS_KEY_PREFIX", "cardcare")
    # the bot fetches a statement itself and uploads it to WhatsApp: the link need not be public
    env.setdefault("CARDCARE_FILES_BASE_URL", f"http://127.0.0.1:{conf['RASA_PORT']}/webhooks/files/statements")
    env.setdefault("PYTHONPATH", str(ROOT))
    for name, value in TURN_THREADS.items():
        env.setdefault(name, value)
    return env


def endpoint_variables(path: Path) -> List[str]:
    """The ${VARIABLES} an endpoints file needs (Rasa fails later, and less clearly, without them)."""
    return sorted(set(re.findall(r"\$\{([A-Z0-9_]+)\}", path.read_text())))


def preflight(env: Mapping[str, str], need_model: bool = True) -> List[str]:
    found = problems(env)
    if not found:  # (the card system's database is opened only with production settings)
        found += demo_accounts_usable()
    conf = settings(env)
    for name in ("ENDPOINTS", "CREDENTIALS") + (("MODEL",) if need_model else ()):
        if not (ROOT / conf[name]).is_file():
            found.append(f"{name}: {conf[name]} does not exist" + (" (run make train)" if name == "MODEL" else ""))
    if (ROOT / conf["ENDPOINTS"]).is_file():
        for name in endpoint_variables(ROOT / conf["ENDPOINTS"]):
            if not env.get(name) and not any(line.startswith(f"{name} ") for line in found):
                found.append(f"{name} is not set (needed by {conf['ENDPOINTS']})")
    if (ROOT / conf["CREDENTIALS"]).is_file() and re.search(r"^rest:", (ROOT / conf["CREDENTIALS"]).read_text(), re.M):
        found.append(f"{conf['CREDENTIALS']} enables the REST channel: anyone could speak as any customer")
    for name in ("RASA_PORT", "ACTION_PORT", "INGRESS_PORT", "PUBLIC_PORT"):
        if not conf[name].isdigit():
            found.append(f"{name} must be a port number")
    if not conf["WORKERS"].isdigit() or not 1 <= int(conf["WORKERS"]) <= MAX_WORKERS:
        found.append(f"WORKERS must be a number from 1 to {MAX_WORKERS}")
    elif conf["RASA_PORT"].isdigit():
        taken = {conf[n] for n in ("ACTION_PORT", "INGRESS_PORT", "PUBLIC_PORT")}
        clash = [str(p) for p in worker_ports(conf) if str(p) in taken]
        if clash:
            found.append(f"the Rasa workers take ports {conf['RASA_PORT']}..{worker_ports(conf)[-1]}, "
                         f"which includes another process's port {', '.join(clash)}")
    return found


def ports_in_use(conf: Mapping[str, str], nginx: bool) -> List[str]:
    """The ports make serve is about to listen on that another process holds already (say, the
    sandbox on 5006 while a second worker would take RASA_PORT+1): refused before anything
    starts, instead of a worker that cannot bind and is restarted until the set gives up."""
    wanted = [("127.0.0.1", int(conf["INGRESS_PORT"]), "the ingress (INGRESS_PORT)"),
              ("127.0.0.1", int(conf["ACTION_PORT"]), "the action server (ACTION_PORT)")]
    wanted += [("127.0.0.1", port, f"Rasa worker {n + 1} (RASA_PORT{'+' + str(n) if n else ''})")
               for n, port in enumerate(worker_ports(conf))]
    if nginx:
        wanted.append((conf["PUBLIC_HOST"], int(conf["PUBLIC_PORT"]), "nginx (PUBLIC_HOST:PUBLIC_PORT)"))
    found = []
    for host, port, who in wanted:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind (TIME_WAIT is no clash)
            try:
                probe.bind((host, port))
            except OSError:
                found.append(f"port {port}, for {who}, is in use by another process: stop it or choose another port")
    return found


def nginx_binary() -> Optional[str]:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def console_access(allow: str) -> str:
    """nginx allow/deny lines for the console: CONSOLE_ALLOW='10.0.0.0/8 192.168.1.0/24', or 'all'."""
    networks = allow.replace(",", " ").split()
    if not networks or networks == ["all"]:
        return "            # reachable from anywhere: set CONSOLE_ALLOW to the bank's networks to restrict"
    for network in networks:
        if not re.fullmatch(r"[0-9a-fA-F:.]+(/\d{1,3})?", network):
            raise SystemExit(f"CONSOLE_ALLOW: {network!r} is not an address or network")
    return "\n".join([f"            allow {n};" for n in networks] + ["            deny all;"])


def render_nginx(env: Mapping[str, str]) -> Path:
    conf = settings(env)
    run_dir = Path(conf["RUN_DIR"])
    run_dir.mkdir(parents=True, exist_ok=True)
    host = conf["PUBLIC_HOST"]
    listen = f"[{host}]:{conf['PUBLIC_PORT']}" if ":" in host else f"{host}:{conf['PUBLIC_PORT']}"
    text = TEMPLATE.read_text()
    workers = "\n".join(f"        server 127.0.0.1:{port};" for port in worker_ports(conf))
    for key, value in {"RUN_DIR": str(run_dir), "RASA_WORKERS": workers, "INGRESS_PORT": conf["INGRESS_PORT"],
                       "PUBLIC_LISTEN": listen,
                       "CONSOLE_ACCESS": console_access(conf["CONSOLE_ALLOW"])}.items():
        text = text.replace("{{" + key + "}}", value)
    path = run_dir / "nginx.conf"
    path.write_text(text)
    return path


def commands(env: Mapping[str, str], nginx: Optional[str]) -> Dict[str, List[str]]:
    conf = settings(env)
    python = sys.executable
    planned = {
        "ingress": [python, "-m", "connectors.whatsapp.ingress", "--host", "127.0.0.1", "--port", conf["INGRESS_PORT"]],
        "actions": [python, "-m", "deploy.action_server", "--host", "127.0.0.1", "--port", conf["ACTION_PORT"]],
    }
    for number, port in enumerate(worker_ports(conf)):
        planned[worker_name(number)] = [
            python, "-m", "deploy.rasa_server", "-i", "127.0.0.1", "--port", str(port), "-m", conf["MODEL"],
            "--credentials", conf["CREDENTIALS"], "--endpoints", conf["ENDPOINTS"]]
    if nginx:
        run_dir = conf["RUN_DIR"]
        planned["nginx"] = [nginx, "-p", run_dir, "-c", str(Path(run_dir) / "nginx.conf"), "-g", "daemon off;"]
    return planned


def worker_env(env: Mapping[str, str], number: int, count: int) -> Dict[str, str]:
    """A Rasa worker's environment: its share of the customers (CARDCARE_WORKER_SLOT, 0-based
    "index/count"), so that each customer is answered by the same worker while it is up."""
    return {**env, "CARDCARE_WORKER_SLOT": f"{number}/{count}"}


def lower_priority() -> None:
    """(In the child before exec.) Turns are CPU-bound; webhooks must be acknowledged in milliseconds."""
    os.nice(TURN_NICENESS)


def wait_until_up(url: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False


STOP_GRACE_SECONDS = 20  # from SIGTERM to SIGKILL


def stop(processes: Dict[str, subprocess.Popen]) -> List[str]:
    """SIGTERM, and STOP_GRACE_SECONDS before SIGKILL: the Rasa workers first, then the rest, so
    that a turn being answered is ended by its worker (its message kept for the next start)
    instead of failing against an action server already gone (a stranger stopping with 15
    messages in flight saw 12 turns fail so, each counted as a failed attempt). Returns those
    killed."""
    workers = [name for name in processes if name.startswith("rasa")]
    killed = []
    for group in (workers, [name for name in processes if name not in workers]):
        for name in group:
            if processes[name].poll() is None:
                processes[name].terminate()
        for name in group:
            try:
                processes[name].wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                processes[name].kill()
                processes[name].wait()
                killed.append(name)
    return killed


def stopped_line(processes: Dict[str, subprocess.Popen], killed: List[str]) -> str:
    """What the operator reads last: everything is down, and what had to be killed."""
    line = f"make serve: stopped ({', '.join(processes)})"
    if killed:
        line += f"; {', '.join(killed)} did not end within {STOP_GRACE_SECONDS} s of SIGTERM and {'were' if len(killed) > 1 else 'was'} killed"
    return line + ". Messages recorded and not yet answered are answered at the next start."


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="check the settings and print what would run")
    parser.add_argument("--check", action="store_true",
                        help="only check the settings (make serve does, before it trains a missing model)")
    args = parser.parse_args(argv)
    os.umask(0o077)
    env = production_env(os.environ)
    found = preflight(env, need_model=not args.check)
    if found:
        print("make serve: refusing to start in production:", file=sys.stderr)
        for line in found:
            print(f"  - {line}", file=sys.stderr)
        print("Set them in the environment (never in git): see README, 'Running in production'.", file=sys.stderr)
        return 2
    if args.check:
        return 0
    conf = settings(env)
    nginx = nginx_binary()
    if nginx:
        config = render_nginx(env)
        checked = subprocess.run([nginx, "-t", "-q", "-p", conf["RUN_DIR"], "-c", str(config)],
                                 capture_output=True, text=True)
        if checked.returncode != 0:
            print(f"make serve: the nginx configuration is not valid:\n{checked.stderr}", file=sys.stderr)
            return 2
    else:
        print("make serve: nginx is not installed (apt-get install nginx-light): everything listens on 127.0.0.1 "
              f"only; put the bank's own reverse proxy in front (webhook -> 127.0.0.1:{conf['INGRESS_PORT']}, "
              f"statement links and console -> 127.0.0.1:{conf['RASA_PORT']}).", file=sys.stderr)
    planned = commands(env, nginx)
    busy = [] if args.dry_run else ports_in_use(conf, bool(nginx))
    if busy:
        print("make serve: refusing to start:", file=sys.stderr)
        for line in busy:
            print(f"  - {line}", file=sys.stderr)
        return 2
    if args.dry_run:
        for name, command in planned.items():
            print(f"{name}: {' '.join(command)}")
        return 0
    processes: Dict[str, subprocess.Popen] = {}
    stopping: List[int] = []  # a signal asked us to stop: the children's exits are then expected

    def asked_to_stop(signum, _frame) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, asked_to_stop)
    signal.signal(signal.SIGINT, asked_to_stop)
    try:
        processes["ingress"] = subprocess.Popen(planned["ingress"], cwd=ROOT, env=env)
        processes["actions"] = subprocess.Popen(planned["actions"], cwd=ROOT, env=env)
        workers = [name for name in planned if name.startswith("rasa")]
        if "nginx" in planned:
            processes["nginx"] = subprocess.Popen(planned["nginx"], cwd=ROOT, env=env)
        ports = dict(zip(workers, worker_ports(conf)))
        deadline = time.monotonic() + STARTUP_SECONDS
        for number, name in enumerate(workers, start=1):
            # One after another: loading a model is CPU-bound, so side by side on few cores every
            # worker is late, one by one the first answers (what the ingress recorded meanwhile)
            # in the time of one load. The turns run at a lower priority than the ingress: its
            # acknowledgements never wait for a core.
            processes[name] = subprocess.Popen(planned[name], cwd=ROOT, env=worker_env(env, number - 1, len(workers)),
                                               preexec_fn=lower_priority)
            if not wait_until_up(f"http://127.0.0.1:{ports[name]}/webhooks/whatsapp/", processes[name],
                                 max(1.0, deadline - time.monotonic())):
                print(f"make serve: Rasa ({name}, port {ports[name]}) did not come up; stopping.", file=sys.stderr)
                return 1
            if number < len(workers):
                print(f"make serve: {name} is answering ({number} of {len(workers)} workers up)", file=sys.stderr,
                      flush=True)
        door = f"http://{conf['PUBLIC_HOST']}:{conf['PUBLIC_PORT']}" if nginx else "http://127.0.0.1"
        hook = door if nginx else f"{door}:{conf['INGRESS_PORT']}"
        console = door if nginx else f"{door}:{conf['RASA_PORT']}"
        print(f">>> cardcare is serving ({len(workers)} Rasa worker{'s' if len(workers) > 1 else ''}). "
              f"Webhook: {hook}/webhooks/whatsapp/webhook   "
              f"Agent console: {console}/webhooks/whatsapp/agents   (Ctrl-C stops everything)", flush=True)
        restarts: Dict[str, List[float]] = {name: [] for name in workers}
        while True:
            time.sleep(1)
            gone = [name for name, p in processes.items() if p.poll() is not None]
            if not gone:
                continue
            time.sleep(0.5)  # Ctrl-C reaches the children too: let our own handler see it first
            if stopping:
                return 0
            for name in gone:
                now = time.monotonic()
                recent = restarts.get(name)
                if recent is None:
                    print(f"make serve: {name} stopped; stopping the rest.", file=sys.stderr)
                    return 1
                recent[:] = [t for t in recent if now - t < RESTART_WINDOW] + [now]
                if len(recent) > RESTARTS_ALLOWED:
                    print(f"make serve: {name} stopped {len(recent)} times in {RESTART_WINDOW:.0f} s; "
                          "stopping the rest.", file=sys.stderr)
                    return 1
                # the ingress keeps recording and the other workers keep answering meanwhile
                print(f"make serve: {name} (port {ports[name]}) exited with {processes[name].returncode}; "
                      "starting it again.", file=sys.stderr, flush=True)
                processes[name] = subprocess.Popen(planned[name], cwd=ROOT,
                                                   env=worker_env(env, workers.index(name), len(workers)),
                                                   preexec_fn=lower_priority)
    except KeyboardInterrupt:
        return 0
    finally:
        if processes:
            killed = stop(processes)
            print(stopped_line(processes, killed), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
