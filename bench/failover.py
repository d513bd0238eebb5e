"""`python -m bench.failover`: a replica dies, comes back, drains; does any request get lost?

3 replicas behind smg (health checked every second) under the multi-tenant chat workload of
bench.scale, with longer answers so streams are in flight when things happen:

    t = --kill-at       the busiest replica is SIGKILLed (streams from it are cut)
    t = --restart-at    it is started again on the same port
    t = --term-at       the busiest replica then gets SIGTERM (graceful drain), and is started
                        again --restart-after seconds after it exits

Every request ends as "ok", "error" (an HTTP error or an SSE error event: the client knows)
or "lost" (cut off without an error event, or hung): the run reports sent / succeeded /
failed cleanly / lost, when the gateway noticed each change (its /workers), what the
drained replica answered after SIGTERM and after the gateway noticed (its request log), and
tokens/s before the kill and after the recovery.

    python -m bench.failover --json docs/bench/failover.json --plot docs/bench/failover.png
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from .fleet import Fleet, Gateway, Replica, smg_binary, start_gateway
from .sessions import Outcome, SessionLoad, tenant_prefixes

HEALTH_FLAGS = ["--health-check-interval-secs", "1", "--health-check-timeout-secs", "1",
                "--health-failure-threshold", "1", "--health-success-threshold", "1"]
_LOG_LINE = re.compile(r"^(\S+ \S+) INFO refserver.http: request id=\S+ method=\S+ route=(\S+) status=(\d+) .*ms=([\d.]+)",
                       re.MULTILINE)
GENERATION = "/v1/chat/completions"


class HealthWatch(threading.Thread):
    """Polls the gateway's view of each worker; records (time, url, healthy) changes."""

    def __init__(self, gateway: Gateway):
        super().__init__(daemon=True)
        self.gateway, self.changes, self.done = gateway, [], threading.Event()

    def run(self) -> None:
        last: dict[str, bool] = {}
        while not self.done.is_set():
            for url, healthy in self.gateway.healthy().items():
                if last.get(url) != healthy:
                    self.changes.append((time.time(), url, healthy))
                    last[url] = healthy
            time.sleep(0.1)

    def first(self, url: str, healthy: bool, after: float, wait: float = 0.0) -> float | None:
        """When the gateway first saw `url` as `healthy` after `after` (waiting up to `wait` s)."""
        deadline = time.time() + wait
        while True:
            t = next((t for t, u, h in list(self.changes) if u == url and h == healthy and t >= after), None)
            if t is not None or time.time() >= deadline:
                return t
            time.sleep(0.1)


def served(replica: Replica) -> list[tuple[float, float, int]]:
    """(start, end, status) of the generation requests in the replica's logs."""
    out = []
    for stamp, route, status, ms in _LOG_LINE.findall(replica.log_text()):
        if route == GENERATION:
            end = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((end - float(ms) / 1e3, end, int(status)))
    return out


def _after(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 2)


def busiest(replicas: list[Replica], timeout: float = 10) -> Replica:
    """The replica with the most requests in flight (waiting until one has some)."""
    deadline = time.time() + timeout
    while True:
        load = [(r.metrics().get("llamacpp:requests_processing", 0.0), k) for k, r in enumerate(replicas)]
        best, k = max(load)
        if best > 0 or time.time() >= deadline:
            return replicas[k]
        time.sleep(0.05)


def kill_and_restart(replicas: list[Replica], watch: HealthWatch, outcomes: list[Outcome], at: float,
                     restart_at: float, t0: float) -> dict:
    _sleep_until(t0 + at)
    replica = busiest(replicas)  # so streams are cut
    t_kill = time.time()
    replica.signal(signal.SIGKILL)
    replica.wait_exit()
    _sleep_until(t0 + restart_at)
    t_restart = time.time()
    replica.start()
    replica.wait_ready()
    noticed = watch.first(replica.url, False, t_kill)
    back = watch.first(replica.url, True, t_restart, wait=30)
    in_flight = [o for o in outcomes if o.t_start < t_kill < o.t_end]  # on any replica
    cut = [o for o in in_flight if o.kind != "ok"]
    failed_after_notice = [o for o in outcomes if noticed and o.t_start > noticed and o.kind != "ok"]
    return {"event": "SIGKILL then restart", "replica": replica, "t_kill": round(t_kill - t0, 2),
            "gateway_noticed_after_s": _after(noticed, t_kill),
            "in_flight_at_kill_any_replica": len(in_flight),
            "streams_cut": len(cut), "streams_cut_kinds": dict(Counter(o.kind for o in cut)),
            "failed_requests_sent_after_notice": len(failed_after_notice),
            "t_restart": round(t_restart - t0, 2), "healthy_again_after_s": _after(back, t_restart),
            "_since": t_restart}


def drain(replicas: list[Replica], watch: HealthWatch, at: float, restart_after: float, t0: float) -> dict:
    _sleep_until(t0 + at)
    replica = busiest(replicas)  # so requests are in flight when it drains
    t_term = time.time()
    replica.signal(signal.SIGTERM)
    code = replica.wait_exit(60)
    t_exit = time.time()
    log = [r for r in served(replica) if r[1] >= t_term]
    noticed = watch.first(replica.url, False, t_term)
    time.sleep(restart_after)
    t_restart = time.time()
    replica.start()
    replica.wait_ready()
    back = watch.first(replica.url, True, t_restart, wait=30)
    return {"event": "SIGTERM (drain) then restart", "replica": replica, "t_term": round(t_term - t0, 2),
            "exit_code": code, "drained_in_s": round(t_exit - t_term, 2),
            "gateway_noticed_after_s": _after(noticed, t_term),
            "in_flight_finished": sum(1 for s, _, st in log if s < t_term and st == 200),
            "new_requests_answered_503": sum(1 for s, _, st in log if s >= t_term and st == 503),
            "routed_after_gateway_noticed": sum(1 for s, _, _ in log if noticed and s > noticed),
            "t_restart": round(t_restart - t0, 2), "healthy_again_after_s": _after(back, t_restart),
            "_since": t_restart}


def settle(events: list[dict]) -> list[dict]:
    """Once the load is over: what each restarted replica served (its new log), as plain data."""
    for e in events:
        replica = e.pop("replica")
        since = e.pop("_since")
        e["replica"] = replica.url
        e["requests_served_after_restart"] = sum(1 for s, _, st in served(replica) if s > since and st == 200)
    return events


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def throughput(outcomes: list[Outcome], t0: float, start: float, end: float) -> float:
    tokens = sum(o.n_tokens for o in outcomes if o.kind == "ok" and t0 + start <= o.t_end < t0 + end)
    return tokens / (end - start)


def timeline(outcomes: list[Outcome], t0: float, seconds: float) -> list[int]:
    per = [0] * (int(seconds) + 1)
    for o in outcomes:
        if o.kind == "ok" and 0 <= o.t_end - t0 < len(per):
            per[int(o.t_end - t0)] += o.n_tokens
    return per


def report(args, outcomes: list[Outcome], events: list[dict], t0: float, seconds: float) -> dict:
    kinds = Counter(o.kind for o in outcomes)
    before = throughput(outcomes, t0, 2, args.kill_at)
    after = throughput(outcomes, t0, seconds - args.recovery_window, seconds)
    return {
        "sent": len(outcomes), "succeeded": kinds["ok"], "failed_clean": kinds["error"], "lost": kinds["lost"],
        "failures": dict(Counter(f"{o.kind}: {o.error}" for o in outcomes if o.kind != "ok").most_common(8)),
        "events": events,
        "throughput": {"tokens_per_s_before_kill": round(before, 1), "tokens_per_s_at_end": round(after, 1),
                       "recovered_ratio": round(after / before, 3) if before else None},
        "tokens_per_second": timeline(outcomes, t0, seconds),
        "config": vars(args) | {"json": str(args.json), "plot": str(args.plot),
                                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
    }


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["tokens_per_second"]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.plot(range(len(per)), per, "-", color="tab:blue", label="generated tokens/s (by completion time)")
    kill, term = result["events"]
    marks = ((kill["t_kill"], "SIGKILL", "red"), (kill["t_restart"], "restart", "green"),
             (term["t_term"], "SIGTERM (drain)", "orange"), (term["t_restart"], "restart", "green"))
    for k, (t, label, color) in enumerate(marks):
        ax.axvline(t, color=color, ls="--", lw=1)
        ax.text(t, max(per or [1]) * (0.95 - 0.12 * (k % 2)), f" {label}", color=color, fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_title(f"3 replicas behind smg: {result['sent']} requests, {result['succeeded']} ok, "
                 f"{result['failed_clean']} failed with an error, {result['lost']} lost", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.splitlines()[0])
    ap.add_argument("--smg", help="path to the smg binary (default: smg on PATH)")
    ap.add_argument("--policy", default="cache_aware")
    ap.add_argument("--seconds", type=float, default=75)
    ap.add_argument("--kill-at", type=float, default=10)
    ap.add_argument("--restart-at", type=float, default=20)
    ap.add_argument("--term-at", type=float, default=32)
    ap.add_argument("--restart-after", type=float, default=3)
    ap.add_argument("--recovery-window", type=float, default=20, help="the last seconds, for tokens/s at the end")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=96, help="long enough that streams are cut by the kill")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    binary = smg_binary(args.smg)
    with Fleet(3, ["-np", "2", "--shutdown-grace", "30"]) as fleet:
        model = fleet.model()
        gateway = start_gateway(binary, args.policy, fleet, model, HEALTH_FLAGS)
        watch = HealthWatch(gateway)
        watch.start()
        load = SessionLoad(gateway.url, model, tenant_prefixes(8, 0), clients=args.clients,
                           max_tokens=args.max_tokens, timeout=30)
        t0 = time.time()
        runner = threading.Thread(target=load.run, args=(args.seconds,), daemon=True)
        runner.start()
        try:
            events = [kill_and_restart(fleet.replicas, watch, load.outcomes, args.kill_at, args.restart_at, t0),
                      drain(fleet.replicas, watch, args.term_at, args.restart_after, t0)]
            runner.join()
            settle(events)
        finally:
            load.stop()
            watch.done.set()
            gateway.stop()
    result = report(args, load.outcomes, events, t0, args.seconds)
    print(json.dumps({k: v for k, v in result.items() if k not in ("tokens_per_second", "config")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        write_plot(result, args.plot)
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
