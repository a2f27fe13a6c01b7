"""The failure campaign of scripts/chaos, kept runnable (release build, throwaway PostgreSQL it may restart).

Scenarios (all by default):
  kills     N times: start `enrich run`, SIGKILL it at a random moment; PostgreSQL restarted once while a
            run is going; then a last run to the end. Every row must be done with exactly the simulator's
            deterministic answer, none failed; prints the kills, takeovers, calls and how fast each new run
            took over the dead one's rows.
  restarts  the run that used to hang: 12,000 pairs, a simulator limited to 400/s with 2% 5xx, concurrency
            64; PostgreSQL restarted, then 7 s later stopped for 8 s and started again. R times; a run that
            has not finished 150 s after the start is hung (then SIGTERM must end it within its grace + 5 s).
Prints one JSON object per scenario and exits 1 when a check fails.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import ENRICH, SCRATCH, Simulator, environment, prepare  # noqa: E402

KILLS = int(os.environ.get("ENRICH_CHAOS_KILLS", "10"))
PAIRS = int(os.environ.get("ENRICH_CHAOS_PAIRS", "20000"))
RESTART_RUNS = int(os.environ.get("ENRICH_CHAOS_RESTARTS", "5"))
SEED = int(os.environ.get("ENRICH_CHAOS_SEED", str(int(time.time()))))
TIERS = ["Retail", "Wholesale", "Distributor", "Partner"]
CURRENCIES = ["USD", "EUR", "GBP", "CAD", "AUD"]


def expected(organization, user):
    """The simulator's answer for a pair (NymbleSimulator.CommerceDirectory, FNV-1a), computed here."""
    mask = (1 << 64) - 1
    value = 0xcbf29ce484222325
    for byte in organization.encode():
        value = ((value ^ byte) * 0x100000001b3) & mask
    value = ((value ^ 0x1f) * 0x100000001b3) & mask
    for byte in user.encode():
        value = ((value ^ byte) * 0x100000001b3) & mask
    if value % 10 == 0:
        return (None, None, None)
    customer = "CN-%06d" % ((value >> 20) % 1_000_000)
    currency = CURRENCIES[(value >> 12) % len(CURRENCIES)]
    if value % 10 == 1:
        return (customer, None, currency)
    return (customer, TIERS[(value >> 8) % len(TIERS)], currency)


def psql(sql):
    result = subprocess.run(["psql", os.environ["DATABASE_URL"], "-AtF", "\t", "-c", sql],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return [line.split("\t") for line in result.stdout.splitlines() if line]


def pg_ctl(*args):
    command = [os.path.join(os.environ["ENRICH_PG_BINDIR"], "pg_ctl"), "-D",
               os.path.join(os.environ["ENRICH_PG_DIR"], "data"), "-w", *args]
    if os.getuid() == 0:
        command = ["runuser", "-u", "postgres", "--"] + command
    subprocess.run(command, check=True, capture_output=True)


def restart_postgres():
    pg_ctl("restart", "-m", "fast", "-l", os.path.join(os.environ["ENRICH_PG_DIR"], "server.log"))


def stop_postgres():
    pg_ctl("stop", "-m", "fast")


def start_postgres():
    pg_ctl("start", "-l", os.path.join(os.environ["ENRICH_PG_DIR"], "server.log"), "-o", os.environ["ENRICH_PG_OPTS"])


def counts(schema):
    try:
        return {state: int(n) for state, n in psql(f'SELECT state, count(*) FROM "{schema}".queue_items GROUP BY 1')}
    except RuntimeError:
        return None


def start_run(schema, url, log, *args):
    return subprocess.Popen([ENRICH, "run", "--progress", "off", *args], env=environment(schema, url),
                            stdout=log, stderr=log)


def verify(schema, pairs):
    """Every row done with exactly the simulator's answer; returns the problems found (at most 10)."""
    problems = []
    rows = psql(f'SELECT organization_id, user_id, state, customer_number, price_tier, currency_code '
                f'FROM "{schema}".queue_items')
    if len(rows) != pairs:
        problems.append(f"{len(rows)} rows, expected {pairs}")
    for organization, user, state, customer, tier, currency in rows:
        got = tuple(value if value != "" else None for value in (customer, tier, currency))
        if state != "done":
            problems.append(f"({organization}, {user}) is {state}")
        elif got != expected(organization, user):
            problems.append(f"({organization}, {user}) has {got}, expected {expected(organization, user)}")
        if len(problems) >= 10:
            break
    return problems


def kills():
    schema = "chaos_kills"
    prepare(schema, PAIRS)
    rng = random.Random(SEED)
    restart_at = KILLS // 2
    takeovers = []
    with Simulator("--rate", "1500", "--error-rate", "0.02", "--drop-rate", "0.01", "--latency", "1ms-5ms") as sim:
        log = open(os.path.join(SCRATCH, "chaos-kills.log"), "w")
        for cycle in range(KILLS):
            before = counts(schema) or {}
            run = start_run(schema, sim.url, log, "--concurrency", "32", "--heartbeat", "1")
            started = time.time()
            # How long until this run made progress, i.e. took over what the killed run held.
            while run.poll() is None and (counts(schema) or {}).get("done", 0) <= before.get("done", 0):
                time.sleep(0.05)
            takeovers.append(round(time.time() - started, 2))
            if cycle == restart_at:
                time.sleep(rng.uniform(0.3, 1.0))
                restart_postgres()
            time.sleep(rng.uniform(0.3, 2.5))
            if run.poll() is None:
                run.send_signal(signal.SIGKILL)
            run.wait()
        final = start_run(schema, sim.url, log, "--concurrency", "32")
        try:
            status = final.wait(timeout=600)
        except subprocess.TimeoutExpired:
            final.kill()
            status = "hung"
        stats = sim.stats()
    problems = verify(schema, PAIRS)
    rows = psql(f'SELECT count(*) FILTER (WHERE takeovers > 0), max(takeovers), max(attempts) '
                f'FROM "{schema}".queue_items')[0]
    runs = dict((state, int(n)) for state, n in psql(f'SELECT state, count(*) FROM "{schema}".job_runs GROUP BY 1'))
    result = {
        "scenario": "kills", "seed": SEED, "pairs": PAIRS, "kills": KILLS, "postgres_restarts": 1,
        "final_exit": status, "rows_wrong_or_missing": len(problems), "examples": problems[:5],
        "rows_taken_over": int(rows[0] or 0), "max_takeovers_of_a_row": int(rows[1] or 0),
        "max_attempts_of_a_row": int(rows[2] or 0), "runs": runs,
        "seconds_until_each_run_progressed": takeovers,
        "api_calls": stats["access200"] + stats["access429"] + stats["access5xx"] + stats["accessDropped"],
        "api_200": stats["access200"], "logins": stats["logins"],
    }
    result["ok"] = status == 0 and not problems and runs.get("running", 0) == 0
    return result


def restarts():
    outcomes = []
    hangs = 0
    with Simulator("--rate", "400", "--error-rate", "0.02") as sim:
        for attempt in range(RESTART_RUNS):
            schema = f"chaos_restart_{attempt}"
            prepare(schema, 12_000)
            log = open(os.path.join(SCRATCH, f"chaos-restart-{attempt}.log"), "w")
            run = start_run(schema, sim.url, log, "--concurrency", "64")
            started = time.time()
            time.sleep(4 + attempt % 8)
            restart_postgres()
            time.sleep(7)
            stop_postgres()
            time.sleep(8)
            start_postgres()
            try:
                status = run.wait(timeout=max(1, 150 - (time.time() - started)))
                outcome = {"exit": status, "seconds": round(time.time() - started, 1)}
            except subprocess.TimeoutExpired:
                hangs += 1
                run.send_signal(signal.SIGTERM)
                signalled = time.time()
                try:
                    run.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    run.kill()
                outcome = {"exit": "hung", "sigterm_to_exit_s": round(time.time() - signalled, 1)}
            outcome["rows"] = counts(schema)
            outcomes.append(outcome)
    result = {"scenario": "restarts", "runs": RESTART_RUNS, "hung": hangs, "outcomes": outcomes}
    result["ok"] = hangs == 0 and all(o["exit"] == 0 and o["rows"] == {"done": 12_000} for o in outcomes)
    return result


def main(names):
    scenarios = {"kills": kills, "restarts": restarts}
    unknown = [name for name in names if name not in scenarios]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(scenarios)}", file=sys.stderr)
        return 64
    ok = True
    for name in names or list(scenarios):
        result = scenarios[name]()
        print(json.dumps(result), flush=True)
        ok = ok and result["ok"]
    print("chaos: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
