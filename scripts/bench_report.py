#!/usr/bin/env python3
"""bench_report.py OUT: the benchmark's report from the JSON that
scripts/bench.sh left in OUT (tpsctl load --json, tps-bench --json, the
/proc samples): OUT/report.md (tables, ratios, targets) and OUT/latency.svg
(latency percentiles versus offered rate, drawn by gnuplot when present).
Missing files (a phase not run) leave their rows out."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

OUT = Path(sys.argv[1])


def load(name):
    path = OUT / f"{name}.json"
    if not path.exists():
        return None
    text = path.read_text().strip()
    return json.loads(text) if text else None


def q(run, kind, p):
    """A percentile (ms) of tpsctl's accept_ms/e2e_ms, or None."""
    h = (run or {}).get(kind) or {}
    return h.get(p)


def fmt(x, digits=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}"


def ratio(a, b):
    if not a or not b:
        return "–"
    return f"{a / b:.0%}"


raw = load("raw")
raw_drain = load("raw-drain")
bare = load("bare-closed")
real = load("real-closed")
real_res = load("real-closed-resources")
open1000 = load("real-open1000")
open_res = load("real-open1000-resources")
http = load("real-http")
payload = load("real-payload")
drain = load("real-drain")
drain_resume = load("real-drain-resume")
bare_sweep = load("bare-sweep")
real_sweep = load("real-sweep")
scale = {n: (load(f"real-scale-{n}"), load(f"real-scale-{n}-resources")) for n in (1, 2, 3)}

raw_rate = raw and raw["throughput_per_s"]
bare_rate = bare and bare.get("completed_per_s")
lines = []
w = lines.append

machine = (OUT / "machine.txt").read_text().strip() if (OUT / "machine.txt").exists() else ""
w("# Benchmark report\n")
w("```\n" + machine + "\n```\n")

w("## Throughput at saturation (closed model) and latency\n")
w("Completed = signals that reached a terminal state per second, from the first "
  "submit to the last terminal one. Accept = submit → answer (durably queued); "
  "end-to-end = submit → result (terminal). ms.\n")
w("| run | completed/s | of bare | of raw | accept p50 | accept p99 | end-to-end p50 | end-to-end p99 | refused |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
if raw:
    lat = raw.get("latency_ms") or {}
    w(f"| 1. raw JetStream (publish+ack → pull → result+ack → ack), {raw['concurrency']} publishers, {raw['size']} B "
      f"| {fmt(raw_rate)} | | 100% | {fmt((raw.get('publish_ack_ms') or {}).get('p50'), 2)} "
      f"| {fmt((raw.get('publish_ack_ms') or {}).get('p99'), 2)} | {fmt(lat.get('p50'), 2)} | {fmt(lat.get('p99'), 2)} | |")


def row(name, run):
    if not run:
        return
    c = run.get("completed_per_s")
    w(f"| {name} | {fmt(c)} | {ratio(c, bare_rate)} | {ratio(c, raw_rate)} "
      f"| {fmt(q(run, 'accept_ms', 'p50'), 2)} | {fmt(q(run, 'accept_ms', 'p99'), 2)} "
      f"| {fmt(q(run, 'e2e_ms', 'p50'), 2)} | {fmt(q(run, 'e2e_ms', 'p99'), 2)} "
      f"| {run.get('refused', 0):,} ({run.get('refusal_rate', 0):.1%}) |")


if bare:
    row(f"2. bare tonic → JetStream, {bare['concurrency']} in flight", bare)
if real:
    row(f"3. real system, gRPC, {real['concurrency']} in flight", real)
if http:
    row(f"3. real system, HTTP facade, {http['concurrency']} in flight", http)
if payload:
    row(f"3. real system, payloads {payload.get('payload_bytes')} B, {payload['concurrency']} in flight", payload)
for n, (run, _) in scale.items():
    if run:
        row(f"3. real system, {n} fast-pool worker replica(s)", run)
if open1000:
    c = open1000.get("completed_per_s")
    w(f"| 3. real system, open model 1000/s (offered, not saturation) | {fmt(c)} | | "
      f"| {fmt(q(open1000, 'accept_ms', 'p50'), 2)} | {fmt(q(open1000, 'accept_ms', 'p99'), 2)} "
      f"| {fmt(q(open1000, 'e2e_ms', 'p50'), 2)} | {fmt(q(open1000, 'e2e_ms', 'p99'), 2)} "
      f"| {open1000.get('refused', 0):,} ({open1000.get('refusal_rate', 0):.1%}) |")
w("")

w("## Targets (issue 9), as measured in this run\n")
w("| target | measured | met |")
w("|---|---|---|")


def target(name, value, ok):
    w(f"| {name} | {value} | {'yes' if ok else 'no' if ok is not None else '–'} |")


real_rate = real and real.get("completed_per_s")
if real_rate and bare_rate:
    target("end-to-end throughput ≥ 60% of the bare baseline",
           f"{real_rate:,.0f}/s = {real_rate / bare_rate:.0%} of {bare_rate:,.0f}/s", real_rate >= 0.6 * bare_rate)
if real_rate:
    target("≥ 15,000 signals/s", f"{real_rate:,.0f}/s", real_rate >= 15000)
if real_rate and raw_rate:
    target("(ratio to the raw pipeline, reported)", f"{real_rate / raw_rate:.0%} of {raw_rate:,.0f}/s", None)
if open1000:
    a99 = q(open1000, "accept_ms", "p99")
    e99 = q(open1000, "e2e_ms", "p99")
    lag99 = q(open1000, "send_lag_ms", "p99")
    target("1000/s open model: accept p99 < 2 ms",
           f"{fmt(a99, 2)} ms (of which the generator's own lateness p99 {fmt(lag99, 2)} ms)",
           a99 is not None and a99 < 2)
    target("1000/s open model: submit → result p99 < 10 ms", f"{fmt(e99, 2)} ms", e99 is not None and e99 < 10)
if open_res:
    ours = {k: v for k, v in open_res["services"].items() if k != "nats"}
    worst = max(ours.items(), key=lambda kv: kv[1]["peak_rss_kib"])
    target("RSS < 50 MB per service at 1000/s",
           f"largest: {worst[0]} {worst[1]['peak_rss_kib'] * 1024 / 1e6:.1f} MB",
           all(v["peak_rss_kib"] * 1024 < 50e6 for v in ours.values()))
drain_rate = None
if drain and drain_resume and drain.get("last_terminal_at"):
    span = drain["last_terminal_at"] - drain_resume["resumed_at"]
    drain_rate = drain_resume["backlog"] / span if span > 0 else None
if drain_rate and raw_drain:
    raw_pull = raw_drain["drain_per_s"]
    target(f"drain of a {drain_resume['backlog']:,}-signal backlog ≥ 50% of the raw pull+ack rate",
           f"{drain_rate:,.0f}/s = {drain_rate / raw_pull:.0%} of {raw_pull:,.0f}/s", drain_rate >= 0.5 * raw_pull)
w("")

if raw_drain or drain_rate:
    w("## Backlog drain\n")
    w("| what | rate/s |")
    w("|---|---:|")
    if raw_drain:
        w(f"| raw: prefill ({raw_drain['messages']:,} publishes, acks in flight) | {fmt(raw_drain['prefill_per_s'], 0)} |")
        w(f"| raw: pull + ack | {fmt(raw_drain['drain_per_s'], 0)} |")
        if raw_drain.get("process"):
            w(f"| raw: pull + result publish + ack | {fmt(raw_drain['process']['drain_per_s'], 0)} |")
    if drain_rate:
        w(f"| real: paused fast pool resumed, until the last signal was terminal ({drain.get('terminal', 0):,} of {drain.get('accepted', 0):,}) | {fmt(drain_rate, 0)} |")
    w("")


def resources(title, res, run):
    if not res:
        return
    w(f"## {title}\n")
    done = (run or {}).get("completed_per_s") or 0
    w(f"CPU over the {res['window_s']} s of load (100% = one core); "
      "RSS = peak VmRSS over the run, settling included. µs/signal = CPU time ÷ signals completed in the window.\n")
    msgs = res.get("nats_msgs")
    if msgs and done:
        n = done * res["window_s"]
        w(f"NATS server messages per signal in that window: {msgs['in'] / n:.1f} in, {msgs['out'] / n:.1f} out "
          "(publishes, acks, pull requests, KV operations and their replies, deliveries).\n")
    w("| process | peak RSS MB | CPU % | CPU µs/signal |")
    w("|---|---:|---:|---:|")
    for name, v in res["services"].items():
        per = v["cpu_s"] / (done * res["window_s"]) * 1e6 if done else None
        w(f"| {name} | {v['peak_rss_kib'] * 1024 / 1e6:.1f} | {v['cpu_pct']:.0f} | {fmt(per, 0)} |")
    w("")


resources("Memory and CPU per service at 1000/s (open model)", open_res, open1000)
resources("Memory and CPU per service at saturation (closed model)", real_res, real)

if any(run for run, _ in scale.values()):
    w("## Scaling the fast pool: 1 → 3 worker replicas\n")
    w("| replicas | completed/s | vs 1 | accept p99 | end-to-end p99 | worker CPU % (sum) | NATS CPU % |")
    w("|---:|---:|---:|---:|---:|---:|---:|")
    one = (scale[1][0] or {}).get("completed_per_s")
    for n, (run, res) in scale.items():
        if not run:
            continue
        c = run.get("completed_per_s")
        workers = sum(v["cpu_pct"] for k, v in (res or {"services": {}})["services"].items() if k.startswith("worker-fast"))
        nats = ((res or {}).get("services", {}).get("nats") or {}).get("cpu_pct")
        w(f"| {n} | {fmt(c)} | {ratio(c, one)} | {fmt(q(run, 'accept_ms', 'p99'), 2)} | {fmt(q(run, 'e2e_ms', 'p99'), 2)} | {workers:.0f} | {fmt(nats, 0)} |")
    w("")


def sweep_rows(name, sweep):
    rows = []
    for s in (sweep or {}).get("steps", []):
        rows.append((s["rate"], q(s, "accept_ms", "p50"), q(s, "accept_ms", "p99"),
                     q(s, "e2e_ms", "p50"), q(s, "e2e_ms", "p99"), s.get("completed_per_s"),
                     s.get("refusal_rate", 0), s.get("passed")))
    return rows


sweeps = {"real": sweep_rows("real", real_sweep), "bare": sweep_rows("bare", bare_sweep)}
if any(sweeps.values()):
    w("## Latency versus offered rate (open model, rate sweep)\n")
    w("![latency percentiles versus offered rate](latency.png) ([SVG](latency.svg))\n")
    for name, rows in sweeps.items():
        if not rows:
            continue
        sweep = real_sweep if name == "real" else bare_sweep
        step_s = ((sweep or {}).get("steps") or [{}])[0].get("duration_s", 0)
        w(f"**{name}** (each step {step_s:.0f} s; "
          "a step fails above 1% refused or accept p99 100 ms, and the sweep stops there)\n")
        w("| offered/s | completed/s | accept p50 | accept p99 | end-to-end p50 | end-to-end p99 | refused | passed |")
        w("|---:|---:|---:|---:|---:|---:|---:|---|")
        for rate, a50, a99, e50, e99, c, refused, passed in rows:
            w(f"| {rate:,.0f} | {fmt(c)} | {fmt(a50, 2)} | {fmt(a99, 2)} | {fmt(e50, 2)} | {fmt(e99, 2)} | {refused:.1%} | {passed} |")
        w("")
        (OUT / f"sweep-{name}.dat").write_text(
            "# rate accept_p50 accept_p99 e2e_p50 e2e_p99\n"
            + "".join(f"{r[0]} {r[1] or 'NaN'} {r[2] or 'NaN'} {r[3] or 'NaN'} {r[4] or 'NaN'}\n" for r in rows))
    gnuplot = shutil.which("gnuplot")
    if gnuplot:
        plots = []
        for name, rows in sweeps.items():
            if rows:
                f = OUT / f"sweep-{name}.dat"
                plots += [f"'{f}' using 1:3 with linespoints pointtype 7 title '{name}: accept p99'",
                          f"'{f}' using 1:2 with linespoints dashtype 2 title '{name}: accept p50'",
                          f"'{f}' using 1:5 with linespoints title '{name}: end-to-end p99'",
                          f"'{f}' using 1:4 with linespoints dashtype 2 title '{name}: end-to-end p50'"]
        body = f"""set title 'TPS: latency percentiles versus offered rate (open model, VALIDATE on the fast pool)'
set xlabel 'offered rate (signals/s)'
set ylabel 'latency (ms, log scale)'
set logscale y
set grid
set key top left
plot {", ".join(plots)}
"""
        # The same plot as SVG and as PNG (cairo).
        script = (f"set terminal svg size 900,520 font 'sans,12' background '#ffffff'\n"
                  f"set output '{OUT / 'latency.svg'}'\n{body}"
                  f"set terminal pngcairo size 900,520 font 'sans,10' background '#ffffff'\n"
                  f"set output '{OUT / 'latency.png'}'\nreplot\n")
        subprocess.run([gnuplot], input=script, text=True, check=True)
    else:
        w("(gnuplot not installed: no plot; `apt-get install gnuplot-nox`)\n")

(OUT / "report.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
