"""What scripts/bench and scripts/chaos share: the release binary, the simulator as a child process, fresh
schemas. Both scripts run from the project root with DATABASE_URL set (scripts/lib/postgres.sh)."""
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

ENRICH = os.path.abspath(".build/release/enrich")
CREDENTIALS = {
    "NYMBLE_ORG_CODE": "org_12345",
    "NYMBLE_CLIENT_ID": "sdaf43tfsdg45dg",
    "NYMBLE_CLIENT_SECRET": "QsFdas%4F1asr23tgb675%3",
}
SCRATCH = tempfile.mkdtemp(prefix="enrich-harness-")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(schema, base_url=None, **extra):
    env = dict(os.environ, **CREDENTIALS, ENRICH_SCHEMA=schema, ENRICH_PROGRESS="off", ENRICH_LOG_LEVEL="notice")
    if base_url:
        env["NYMBLE_BASE_URL"] = base_url
    env.update({k: str(v) for k, v in extra.items()})
    return env


def enrich(args, schema, check=True, **extra):
    result = subprocess.run([ENRICH] + args, env=environment(schema, **extra), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"enrich {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def prepare(schema, pairs):
    """A fresh schema with `pairs` pending rows (generated in the database: fast even for a million)."""
    subprocess.run(["psql", os.environ["DATABASE_URL"], "-qc", f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'],
                   check=True, capture_output=True)
    enrich(["migrate"], schema)
    if pairs:
        sql = f"SELECT 'org' || (n % 997), 'user' || n FROM generate_series(1, {pairs}) AS n"
        enrich(["enqueue", "--from-sql", sql], schema)


class Simulator:
    def __init__(self, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(SCRATCH, f"simulator-{self.port}.log"), "w")
        self.process = subprocess.Popen(
            [ENRICH, "simulate", "--port", str(self.port), "--log-level", "warning", *args],
            env=dict(os.environ, **CREDENTIALS), stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the simulator did not start")

    def stats(self):
        with urllib.request.urlopen(self.url + "/_stats", timeout=5) as response:
            return json.load(response)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait()
        self.log.close()
