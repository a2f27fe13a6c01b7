"""The benchmark scenarios of scripts/bench (which builds enrich in release mode and provides DATABASE_URL).

Each scenario gets its own schema, a fresh simulator process and the release `enrich` binary; CPU time and
peak RSS of `enrich run` come from /usr/bin/time. Prints one JSON object per scenario, then a table.
"""
import json
import math
import os
import shutil
import socket
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import (  # noqa: E402
    CREDENTIALS as harness_credentials, ENRICH, SCRATCH, Simulator, enrich, environment, free_port, prepare)

QUICK = os.environ.get("ENRICH_BENCH_QUICK") == "1"
# ENRICH_BENCH_BINARIES="before=/path/a,after=/path/b" runs each scenario once per binary, in the same run
# (the simulator and the database ceiling stay this build's), for side-by-side figures.
BINARIES = [tuple(item.split("=", 1)) for item in os.environ.get("ENRICH_BENCH_BINARIES", "").split(",") if item]
RUN_BINARY = ENRICH


class Run:
    """`enrich run` under /usr/bin/time (user, system CPU seconds and peak RSS in KiB)."""

    def __init__(self, schema, base_url, *args, **extra):
        self.timing = os.path.join(SCRATCH, f"time-{schema}-{time.time_ns()}")
        self.errors = open(self.timing + ".stderr", "w")
        self.process = subprocess.Popen(
            ["/usr/bin/time", "-f", "%U %S %M", "-o", self.timing, RUN_BINARY, "run", *args],
            env=environment(schema, base_url, **extra), stdout=subprocess.PIPE, stderr=self.errors, text=True)
        self.started = time.time()

    def stop(self):
        # /usr/bin/time forwards nothing: signal its child, the enrich process.
        for line in subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout.split():
            os.kill(int(line), signal.SIGTERM)

    def wait(self, timeout=None):
        output, _ = self.process.communicate(timeout=timeout)
        self.errors.close()
        self.elapsed = time.time() - self.started
        user, system, rss = open(self.timing).read().split()[-3:]
        self.cpu = float(user) + float(system)
        self.rss_mb = int(rss) / 1024
        self.summary = output.strip().splitlines()[-1] if output.strip() else ""
        self.status = self.process.returncode
        return self

    def rows_per_second(self):
        """The run's rate from its summary line (`... in 3.6 s (8123 rows/s)`): rows finished over the run's
        exact duration, where the printed seconds are rounded to a tenth (about ±1.4% of a 3.6 s run)."""
        return float(self.summary.rsplit("(", 1)[-1].split()[0])


def sample(simulator, run, seconds, every=1.0):
    """Simulator counters every `every` seconds while the run lasts (at most `seconds`)."""
    samples = []
    start = run.started
    while time.time() - start < seconds and run.process.poll() is None:
        stats = simulator.stats()
        samples.append((time.time() - start, stats["access200"], stats["access429"]))
        time.sleep(every - ((time.time() - start) % every))
    return samples


def window(samples, since, until):
    """(accepted/s, 429 share) between the samples nearest to `since` and `until` seconds."""
    first = min(samples, key=lambda s: abs(s[0] - since))
    last = min(samples, key=lambda s: abs(s[0] - until))
    seconds = last[0] - first[0]
    accepted, throttled = last[1] - first[1], last[2] - first[2]
    return accepted / seconds, throttled / max(1, accepted + throttled), seconds


# ---- scenarios -------------------------------------------------------------------------------------------

OVERHEAD_CONCURRENCY = 64


def postgres_cpu_seconds():
    """User + system CPU of the local PostgreSQL cluster so far: the postmaster, its live children and the
    children it has reaped (backends of ended connections); None when the server is not a local process."""
    try:
        directory = psql("SHOW data_directory")
        postmaster = int(open(os.path.join(directory, "postmaster.pid")).readline())
        ticks = os.sysconf("SC_CLK_TCK")

        def fields(pid):
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()

        own = fields(postmaster)
        total = sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
        for child in children:
            try:
                total += sum(int(v) for v in fields(child)[11:13])
            except OSError:
                pass  # ended meanwhile: counted in the postmaster's cutime once reaped
        return total / ticks
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None


class Nginx:
    """nginx from Debian answering login and access with fixed bodies at once: an API that costs the shared
    cores next to nothing, so that the runner's own cost shows (the simulator takes about a third of them)."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = tempfile.mkdtemp(prefix="nginx-", dir=SCRATCH)
        config = os.path.join(self.directory, "nginx.conf")
        with open(config, "w") as file:
            file.write(f"""worker_processes 1;
daemon off;
pid {self.directory}/nginx.pid;
error_log {self.directory}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {self.directory};
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{self.port} reuseport backlog=4096;
        location = /api/auth/login {{
            default_type application/json;
            return 200 '{{"AccessToken":"nginx-bench-token","TokenType":"Bearer","ExpiresIn":86400}}';
        }}
        location = /api/auth/access {{
            default_type application/json;
            return 200 '{{"CustomerNumber":"C-000042","PriceTier":"Gold","CurrencyCode":"EUR"}}';
        }}
    }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen([nginx, "-c", config, "-p", self.directory],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait()


def database_ceiling(pairs):
    """Rows per second `benchmark-database` drains from a fresh queue of `pairs` (this build's binary)."""
    prepare("bench_ceiling", pairs)
    return json.loads(enrich(["benchmark-database"], "bench_ceiling").stdout)["rows_per_second"]


def overhead(api="simulator"):
    pairs = 10_000 if QUICK else 100_000
    # The ceiling is measured just before and just after the run and the share taken against their mean: the
    # shared machine's speed drifts within minutes, and one ceiling measured before the run moved the share
    # by as much as the runner's own changes.
    ceilings = [database_ceiling(pairs)]
    prepare("bench_overhead", pairs)
    server = Nginx() if api == "nginx" else Simulator()
    with server:
        postgres_before = postgres_cpu_seconds()
        run = Run("bench_overhead", server.url, "--concurrency", str(OVERHEAD_CONCURRENCY)).wait()
        postgres_after = postgres_cpu_seconds()
    ceilings.append(database_ceiling(pairs))
    ceiling = sum(ceilings) / 2
    rate = run.rows_per_second()
    cpu_us = run.cpu / pairs * 1e6
    share = rate / ceiling
    postgres_us = (postgres_after - postgres_before) / pairs * 1e6 if postgres_after is not None else None
    return {
        "scenario": "overhead" if api == "simulator" else "overhead-nginx", "api": api, "pairs": pairs,
        "concurrency": OVERHEAD_CONCURRENCY, "items_per_second": round(rate), "cpu_us_per_item": round(cpu_us, 1),
        "postgres_cpu_us_per_item": postgres_us and round(postgres_us, 1), "peak_rss_mb": round(run.rss_mb, 1),
        "db_ceiling_rows_per_second": round(ceiling), "db_ceilings_before_after": [round(c) for c in ceilings],
        "share_of_ceiling": round(share, 3),
        # With the simulator on the same two cores (about a third of them) the share says more about the
        # machine than the runner: there the CPU per item is the target, the share is for nginx.
        "target": ("<= 40 us CPU per item" if api == "simulator"
                   else ">= 60% of the database ceiling and <= 40 us CPU per item"),
        "pass": cpu_us <= 40 and (api == "simulator" or share >= 0.60),
    }


def limit(known):
    limit_rate = 300
    seconds = 25 if QUICK else 70
    prepare("bench_limit", limit_rate * (seconds + 15))
    with Simulator("--rate", str(limit_rate)) as simulator:
        args = ["--rate", str(limit_rate)] if known else []
        run = Run("bench_limit", simulator.url, *args)
        samples = sample(simulator, run, seconds)
        run.stop()
        run.wait(timeout=60)
        final = simulator.stats()
    sustained, share_429, span = window(samples, 10, seconds)
    throttled = final["access429"]
    result = {
        "scenario": "known-limit" if known else "unknown-limit", "limit": limit_rate,
        "window_seconds": round(span), "items_per_second": round(sustained, 1),
        "share_of_limit": round(sustained / limit_rate, 4), "share_429_after_10s": round(share_429, 4),
        "throttled_total": throttled, "throttle_events": run_log_count(run, "429 from the API"),
    }
    if known:
        result.update(target=">= 99% of R and zero 429s",
                      **{"pass": sustained / limit_rate >= 0.99 and throttled == 0})
    else:
        result.update(target=">= 97% of R, <= 1% 429s after the first 10 s",
                      **{"pass": sustained / limit_rate >= 0.97 and share_429 <= 0.01})
    return result


def psql(sql):
    return subprocess.run(["psql", os.environ["DATABASE_URL"], "-Atqc", sql], check=True, capture_output=True,
                          text=True).stdout.strip()


def enrich_pid(run):
    """The pid of the `enrich` process under a Run's /usr/bin/time."""
    children = subprocess.run(["pgrep", "-P", str(run.process.pid)], capture_output=True, text=True).stdout.split()
    return int(children[0])


def fleet(known):
    """4 workers x 32 tasks on one queue against an API limited to 300/s with 20 s tokens, past several
    token lifetimes; one worker SIGKILLed and restarted near the end (the takeover time)."""
    limit_rate, lifetime, workers = 300, 20, 4
    seconds = 35 if QUICK else 75
    schema = "bench_fleet"
    prepare(schema, limit_rate * (seconds + 30))
    args = ["--concurrency", "32"] + (["--rate", str(limit_rate)] if known else [])
    with Simulator("--rate", str(limit_rate), "--token-lifetime", str(lifetime)) as simulator:
        runs = [Run(schema, simulator.url, *args) for _ in range(workers)]
        samples = sample(simulator, runs[0], seconds - 12)
        # Kill one worker and start a replacement: how long until the dead worker's rows are taken over.
        victim = runs.pop()
        pid = enrich_pid(victim)
        run_id = psql(f"SELECT id FROM {schema}.job_runs WHERE pid = {pid} AND state = 'running'")
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        victim.wait(timeout=30)
        runs.append(Run(schema, simulator.url, *args))
        takeover = None
        while time.time() - killed < 30:
            held = psql(f"SELECT count(*) FROM {schema}.queue_items WHERE state = 'running' AND job_run_id = {run_id}")
            if held == "0":
                takeover = time.time() - killed
                break
            time.sleep(0.05)
        samples += sample(simulator, runs[0], seconds)  # runs[0] is still the first worker: same time axis
        for run in runs:
            run.stop()
        for run in runs:
            run.wait(timeout=60)
        final = simulator.stats()
    sustained, share_429, span = window(samples, 10, seconds)
    calls = final["access200"] + final["access429"] + final["access5xx"] + final["access401"] + final["access400"]
    reservations = int(psql(f"SELECT coalesce(sum(reservations), 0) FROM {schema}.api_limiter") or 0)
    # Every coordination statement (reservations, pause reads, the rate's lead, token reads and logins), as
    # PostgreSQL counted their scans of the two fleet tables; conservative: a statement that scans twice
    # (the lead's locked read, then its update) counts twice.
    statements = int(psql(
        "SELECT coalesce(sum(coalesce(idx_scan, 0) + coalesce(seq_scan, 0)), 0) FROM pg_stat_user_tables "
        f"WHERE schemaname = '{schema}' AND relname IN ('api_limiter', 'api_credentials')") or 0)
    allowed_logins = math.ceil(seconds / (lifetime * 0.9)) + 1
    result = {
        "scenario": "fleet-known-rate" if known else "fleet-unknown-rate", "workers": workers, "limit": limit_rate,
        "token_lifetime": lifetime, "window_seconds": round(span), "items_per_second": round(sustained, 1),
        "share_of_limit": round(sustained / limit_rate, 4), "share_429_after_10s": round(share_429, 4),
        "throttled_total": final["access429"], "logins": final["logins"], "logins_allowed": allowed_logins,
        "login_429s": final["loginsThrottled"], "takeover_seconds": takeover and round(takeover, 2),
        "budget_round_trips_per_call": round(reservations / max(1, calls), 4),
        "coordination_statements_per_call": round(statements / max(1, calls), 4),
    }
    logins_ok = final["logins"] <= allowed_logins and final["loginsThrottled"] == 0
    takeover_ok = takeover is not None and takeover <= 2 and statements / max(1, calls) <= 0.1
    if known:
        result.update(target="0 429s, logins <= one per lifetime + 1, takeover <= 2 s, <= 0.1 statements per call",
                      **{"pass": final["access429"] == 0 and logins_ok and takeover_ok})
    else:
        result.update(target=">= 97% of the limit, <= 1% 429s after 10 s, logins <= one per lifetime + 1, "
                             "takeover <= 2 s, <= 0.1 statements per call",
                      **{"pass": sustained / limit_rate >= 0.97 and share_429 <= 0.01 and logins_ok and takeover_ok})
    return result


def run_log_count(run, text):
    return sum(text in line for line in open(run.timing + ".stderr"))


def wrk_ceiling(delay, concurrency, seconds=6):
    """Answers per second that wrk (an ideal client: one C event loop, no database, no token store)
    gets from a fresh simulator with the same latency at the same concurrency: what C/L really is once the
    simulator's own time per request is counted (its 50 ms answer takes about 50.9 ms on loopback)."""
    if not shutil.which("wrk"):
        return None
    with Simulator("--latency", f"{int(delay * 1000)}ms") as simulator:
        login = json.dumps({"OrgCode": harness_credentials["NYMBLE_ORG_CODE"],
                            "ClientId": harness_credentials["NYMBLE_CLIENT_ID"],
                            "ClientSecret": harness_credentials["NYMBLE_CLIENT_SECRET"]}).encode()
        request = urllib.request.Request(simulator.url + "/api/auth/login", data=login,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.load(response)["AccessToken"]
        script = os.path.join(SCRATCH, "wrk-access.lua")
        with open(script, "w") as file:
            file.write('wrk.method = "POST"\n'
                       'wrk.body = \'{"OrganizationId":"org1","UserId":"user1"}\'\n'
                       'wrk.headers["Content-Type"] = "application/json"\n'
                       f'wrk.headers["Authorization"] = "Bearer {token}"\n')
        output = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", script,
                                 simulator.url + "/api/auth/access"], capture_output=True, text=True).stdout
    for line in output.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


def latency(concurrency=64, delay=0.05, target=0.98):
    ideal = concurrency / delay
    pairs = int(ideal * (5 if QUICK else 15))
    prepare("bench_latency", pairs)
    with Simulator("--latency", f"{int(delay * 1000)}ms") as simulator:
        run = Run("bench_latency", simulator.url, "--concurrency", str(concurrency))
        samples = sample(simulator, run, 600, every=0.5)
        run.wait()
    # Steady state: from 1 s in to the last sample before the queue ran dry (start-up and the tail excluded).
    busy = [s for s in samples if s[1] < pairs * 0.98]
    steady, _, span = window(busy, 1, busy[-1][0])
    end_to_end = run.rows_per_second()
    reachable = wrk_ceiling(delay, concurrency)
    # The ideal as the simulator really serves it: C over its measured time per answer, not its nominal latency.
    served = min(ideal, reachable) if reachable else ideal
    return {
        "scenario": "latency" if concurrency == 64 else f"latency-{concurrency}", "pairs": pairs,
        "concurrency": concurrency, "delay_ms": int(delay * 1000), "ideal": ideal,
        "items_per_second": round(steady), "share_of_ideal": round(steady / ideal, 4), "window_seconds": round(span, 1),
        "end_to_end_items_per_second": round(end_to_end), "end_to_end_share": round(end_to_end / ideal, 4),
        "wrk_items_per_second": reachable and round(reachable), "wrk_share_of_ideal": reachable and round(reachable / ideal, 4),
        "share_of_wrk": reachable and round(steady / reachable, 4),
        "cpu_us_per_item": round(run.cpu / pairs * 1e6, 1), "peak_rss_mb": round(run.rss_mb, 1),
        "target": f">= {target:.0%} of {concurrency} / {delay} s as the simulator serves it (wrk's rate when "
                  "below C/L; steady state)",
        "pass": steady / served >= target,
    }


def logins():
    lifetime, seconds, concurrency = 10, (25 if QUICK else 60), 256
    prepare("bench_logins", int(concurrency / 0.5 * (seconds + 10)))
    with Simulator("--token-lifetime", str(lifetime), "--latency", "500ms", "--record-times") as simulator:
        run = Run("bench_logins", simulator.url, "--concurrency", str(concurrency))
        time.sleep(seconds - (time.time() - run.started))
        stats = simulator.stats()
        run.stop()
        run.wait(timeout=60)
    times = sorted(stats.get("loginTimes") or [])
    margin = min(300, lifetime * 0.1)
    allowed = math.ceil(seconds / (lifetime - margin))
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {
        "scenario": "logins", "seconds": seconds, "concurrency": concurrency, "token_lifetime": lifetime,
        "logins": stats["logins"], "allowed": allowed, "smallest_gap_seconds": round(min(gaps), 2) if gaps else None,
        "access_401": stats["access401"], "target": "<= ceil(60 / (10 - margin)) logins, never two within a second",
        "pass": stats["logins"] <= allowed and all(gap >= 1 for gap in gaps),
    }


def rss_kib(pid):
    """Peak resident memory so far (VmHWM) of `pid`, in KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def done_rows(schema):
    result = subprocess.run(
        ["psql", os.environ["DATABASE_URL"], "-Atc", f"SELECT count(*) FROM \"{schema}\".queue_items WHERE state = 'done'"],
        capture_output=True, text=True)
    return int(result.stdout.strip() or 0)


def memory():
    """Peak RSS with 10,000 pairs queued vs 1,000,000: after the same work (the first 10,000 rows), which is
    what shows whether the queue's length matters; and over a long stretch of the big run."""
    small, large = 10_000, (100_000 if QUICK else 1_000_000)
    seconds = int(os.environ.get("ENRICH_BENCH_MEMORY_SECONDS", 20 if QUICK else 60))
    with Simulator() as simulator:
        prepare("bench_memory", small)
        small_run = Run("bench_memory", simulator.url).wait()
        prepare("bench_memory", large)
        run = Run("bench_memory", simulator.url)
        time.sleep(0.3)
        pid = int(subprocess.run(["pgrep", "-P", str(run.process.pid)], capture_output=True, text=True).stdout.split()[0])
        at_small = None
        while run.process.poll() is None and (seconds <= 0 or time.time() - run.started < seconds):
            if at_small is None and done_rows("bench_memory") >= small:
                at_small = rss_kib(pid) / 1024
            time.sleep(0.2)
        run.stop()
        run.wait(timeout=300)
    done = done_rows("bench_memory")
    small_mb, long_mb = small_run.rss_mb, run.rss_mb
    ratio = at_small / small_mb if at_small else None
    return {
        "scenario": "memory", "peak_rss_mb_10k_queued": round(small_mb, 1),
        "peak_rss_mb_1m_queued_after_10k_rows": round(at_small, 1) if at_small else None,
        "ratio": round(ratio, 3) if ratio else None, "queued_large": large,
        "long_run_seconds": round(run.elapsed), "long_run_rows_done": done, "peak_rss_mb_long_run": round(long_mb, 1),
        "target": "<= 64 MB, and within 10% of the 10,000-pair run",
        "pass": long_mb <= 64 and ratio is not None and abs(ratio - 1) <= 0.10,
    }


def pickup():
    count = 30 if QUICK else 200
    prepare("bench_pickup", 0)
    with Simulator("--record-times") as simulator:
        run = Run("bench_pickup", simulator.url, "--follow")
        time.sleep(2)
        enqueued = {}
        psql = subprocess.Popen(["psql", os.environ["DATABASE_URL"], "-Atq"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        for n in range(count):
            user = f"pickup{n}"
            psql.stdin.write(
                f"INSERT INTO \"bench_pickup\".queue_items (organization_id, user_id) VALUES ('org1', '{user}') "
                "RETURNING extract(epoch FROM clock_timestamp());\n")
            psql.stdin.flush()
            enqueued[user] = float(psql.stdout.readline())
            time.sleep(0.05)
        psql.stdin.close()
        psql.wait()
        time.sleep(1)
        arrivals = simulator.stats().get("accessArrivals") or {}
        run.stop()
        run.wait(timeout=60)
    latencies = sorted((arrivals[u] - t) * 1000 for u, t in enqueued.items() if u in arrivals)
    p50 = statistics.median(latencies) if latencies else None
    p99 = latencies[min(len(latencies) - 1, math.ceil(len(latencies) * 0.99) - 1)] if latencies else None
    return {
        "scenario": "pickup", "pairs": count, "picked_up": len(latencies), "p50_ms": round(p50, 1) if p50 else None,
        "p99_ms": round(p99, 1) if p99 else None, "max_ms": round(latencies[-1], 1) if latencies else None,
        "target": "p99 <= 50 ms", "pass": len(latencies) == count and p99 is not None and p99 <= 50,
    }


SCENARIOS = {
    "overhead": overhead, "overhead-nginx": lambda: overhead("nginx"), "unknown-limit": lambda: limit(False), "known-limit": lambda: limit(True),
    "latency": latency, "latency-512": lambda: latency(512, 0.2, 0.97), "logins": logins, "memory": memory, "pickup": pickup,
    "fleet-unknown-rate": lambda: fleet(False), "fleet-known-rate": lambda: fleet(True),
}


def main(names):
    global RUN_BINARY
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    results = []
    for name in names or list(SCENARIOS):
        for label, path in BINARIES or [("", ENRICH)]:
            RUN_BINARY = os.path.abspath(path)
            started = time.time()
            result = SCENARIOS[name]()
            if label:
                result = {"scenario": result["scenario"], "binary": label, **result}
            result["bench_seconds"] = round(time.time() - started, 1)
            print(json.dumps(result), flush=True)
            results.append(result)
    print()
    print(f"{'scenario':<15} {'result':<6} figures")
    for result in results:
        figures = {k: v for k, v in result.items() if k not in ("scenario", "pass", "target", "bench_seconds")}
        print(f"{result['scenario']:<15} {'PASS' if result['pass'] else 'FAIL':<6} "
              + ", ".join(f"{k}={v}" for k, v in figures.items()))
        print(f"{'':<22} target: {result['target']}")
    if QUICK:
        print("(quick mode: small and short, not comparable to the targets)")
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
