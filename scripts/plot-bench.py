#!/usr/bin/env python3
"""Summarise a scripts/bench.sh results directory.

    scripts/plot-bench.py bench-results/<timestamp> [--svg FILE] [--no-plot]

Prints Markdown tables (medians over the repeats; ratio = gateway / webstomp) and writes an
SVG (default <dir>/bench.svg) with deliveries/s and p99 latency against the number of
subscribers for both systems. matplotlib is installed into the user site when missing.
"""

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys

SYSTEMS = ("webstomp", "gateway")


def load(results_dir):
    """{(stem, system): [report, ...]} for every <stem>__<system>__<run>.json."""
    cells = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*__*__*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        stem, system, _run = name.split("__", 2)
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            report = {"error": str(e)}
        cells.setdefault((stem, system), []).append(report)
    for path in glob.glob(os.path.join(results_dir, "queues_*__*.json")):
        name = os.path.basename(path)[: -len(".json")]
        if name.count("__") != 1:
            continue
        stem, system = name.split("__")
        if system not in SYSTEMS:
            continue
        with open(path) as f:
            cells[(stem, system)] = [json.load(f)]
    return cells


def get(report, path):
    value = report
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def median(cells, stem, system, path):
    values = [get(r, path) for r in cells.get((stem, system), []) if "error" not in r]
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def failures(cells, stem, system):
    return sum(1 for r in cells.get((stem, system), []) if "error" in r)


def fmt(v, digits=0):
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(g, w):
    if g is None or w is None or w == 0:
        return "-"
    return f"{g / w:.2f}x"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def stems(cells, pattern):
    found = {}
    for stem, _system in cells:
        m = re.fullmatch(pattern, stem)
        if m:
            found[stem] = tuple("" if g is None else int(g) if g.isdigit() else g for g in m.groups())
    return sorted(found, key=lambda s: found[s])


def note(cells, stem):
    bad = [f"{s}: {failures(cells, stem, s)} failed" for s in SYSTEMS if failures(cells, stem, s)]
    lost = []
    for s in SYSTEMS:
        v = median(cells, stem, s, "lost")
        if v:
            lost.append(f"{s} lost {fmt(v)}")
        d = median(cells, stem, s, "connect_failed")
        if d:
            lost.append(f"{s} {fmt(d)} connect failures")
    return "; ".join(bad + lost)


def markdown(cells):
    parts = []
    fan = stems(cells, r"fanout-max_n(\d+)_s(\d+)")
    if fan:
        rows = []
        for stem in fan:
            n, size = re.fullmatch(r"fanout-max_n(\d+)_s(\d+)", stem).groups()
            w = median(cells, stem, "webstomp", "deliveries_per_s")
            g = median(cells, stem, "gateway", "deliveries_per_s")
            wp = median(cells, stem, "webstomp", "latency_ms.p99")
            gp = median(cells, stem, "gateway", "latency_ms.p99")
            rows.append([n, size, fmt(w), fmt(g), ratio(g, w), fmt(wp, 1), fmt(gp, 1), note(cells, stem)])
        parts.append("### Fan-out at saturation (`--rate max`), deliveries/s\n\n" + table(
            ["N", "bytes", "Web-STOMP /s", "stompgate /s", "ratio", "Web-STOMP p99 ms",
             "stompgate p99 ms", "notes"], rows))
    paced = stems(cells, r"fanout-paced_n(\d+)_r(\d+)_s(\d+)")
    if paced:
        rows = []
        for stem in paced:
            n, rate, _size = re.fullmatch(r"fanout-paced_n(\d+)_r(\d+)_s(\d+)", stem).groups()
            vals = [median(cells, stem, s, f"latency_ms.{q}") for s in SYSTEMS for q in ("p50", "p99")]
            rows.append([n, rate, *(fmt(v, 2) for v in vals), ratio(vals[3], vals[1]), note(cells, stem)])
        parts.append("### Fan-out latency, paced publisher (100 B), ms\n\n" + table(
            ["N", "msg/s", "Web-STOMP p50", "Web-STOMP p99", "stompgate p50", "stompgate p99",
             "p99 ratio", "notes"], rows))
    echo = stems(cells, r"echo_s(\d+)")
    if echo:
        rows = []
        for stem in echo:
            size = stem.split("_s")[1]
            w = median(cells, stem, "webstomp", "round_trips_per_s")
            g = median(cells, stem, "gateway", "round_trips_per_s")
            lat = [median(cells, stem, s, f"latency_us.{q}") for s in SYSTEMS for q in ("p50", "p99")]
            rows.append([size, fmt(w), fmt(g), ratio(g, w), *(fmt(v) for v in lat)])
        parts.append("### Request/response via a queue (echo)\n\n" + table(
            ["bytes", "Web-STOMP rt/s", "stompgate rt/s", "ratio", "Web-STOMP p50 us",
             "Web-STOMP p99 us", "stompgate p50 us", "stompgate p99 us"], rows))
    conns = stems(cells, r"connections_c(\d+)(?:_([a-z0-9-]+))?")
    if conns:
        rows = []
        for stem in conns:
            c, client = re.fullmatch(r"connections_c(\d+)(?:_([a-z0-9-]+))?", stem).groups()
            ws = median(cells, stem, "webstomp", "sessions_per_s")
            gs = median(cells, stem, "gateway", "sessions_per_s")
            # The broker's Erlang VM keeps memory it freed when earlier sessions closed, so a
            # later run on the same node can reuse it and show ~0 or a negative delta: only
            # runs whose RSS grew count (the gateway gets a fresh process per run).
            grew = {s: [r for r in cells.get((stem, s), []) if (r.get("rss_per_session_kb") or 0) > 0]
                    for s in SYSTEMS}
            wk = median({(stem, "webstomp"): grew["webstomp"]}, stem, "webstomp", "rss_per_session_kb")
            gk = median({(stem, "gateway"): grew["gateway"]}, stem, "gateway", "rss_per_session_kb")
            wc = median(cells, stem, "webstomp", "idle_cpu_percent")
            gc = median(cells, stem, "gateway", "idle_cpu_percent")
            skipped = [s for s in SYSTEMS for r in cells.get((stem, s), []) if r.get("skipped")]
            n = note(cells, stem)
            reused = [f"{s}: {len(cells.get((stem, s), [])) - len(grew[s])} run(s) reused freed memory, RSS from the others"
                      for s in SYSTEMS
                      if cells.get((stem, s)) and len(grew[s]) < len([r for r in cells[(stem, s)] if "rss_per_session_kb" in r])]
            if reused:
                n = (n + "; " if n else "") + "; ".join(reused)
            if skipped:
                n = (n + "; " if n else "") + "skipped (file limit): " + ", ".join(skipped)
            rows.append([c, client or "native", fmt(ws), fmt(gs), ratio(gs, ws), fmt(wk, 1), fmt(gk, 1),
                         ratio(gk, wk), fmt(wc, 2), fmt(gc, 2), n])
        parts.append("### Idle sessions (CONNECT + 1 SUBSCRIBE), per client profile\n\n" + table(
            ["sessions", "client", "Web-STOMP sessions/s", "stompgate sessions/s", "ratio",
             "Web-STOMP KB/session", "stompgate KB/session", "ratio", "Web-STOMP idle CPU %",
             "stompgate idle CPU %", "notes"], rows))
    queues = stems(cells, r"queues_n(\d+)")
    if queues:
        rows = []
        for stem in queues:
            n = stem.split("_n")[1]
            rows.append([n] + [fmt(median(cells, stem, s, "queues_during")) for s in SYSTEMS])
        parts.append("### Broker queues while N subscribers are connected\n\n" + table(
            ["N", "Web-STOMP", "stompgate"], rows))
    return "\n\n".join(parts) + "\n"


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("installing matplotlib into the user site", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "install", "--user", "--quiet", "matplotlib"]
        if subprocess.call(cmd) != 0:
            subprocess.check_call(cmd + ["--break-system-packages"])
        import site
        import importlib

        importlib.invalidate_caches()
        if site.getusersitepackages() not in sys.path:
            sys.path.append(site.getusersitepackages())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(cells, svg):
    fan = stems(cells, r"fanout-max_n(\d+)_s(\d+)")
    if not fan:
        return False
    plt = ensure_matplotlib()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = sorted({int(re.fullmatch(r"fanout-max_n(\d+)_s(\d+)", s).group(2)) for s in fan})
    styles = {"webstomp": ("tab:orange", "RabbitMQ Web-STOMP"), "gateway": ("tab:blue", "stompgate")}
    for system in SYSTEMS:
        color, label = styles[system]
        for size, dash in zip(sizes, ("-", "--", ":")):
            points = []
            for stem in fan:
                n, s = map(int, re.fullmatch(r"fanout-max_n(\d+)_s(\d+)", stem).groups())
                if s != size:
                    continue
                d = median(cells, stem, system, "deliveries_per_s")
                p = median(cells, stem, system, "latency_ms.p99")
                if d is not None:
                    points.append((n, d, p))
            if not points:
                continue
            points.sort()
            xs = [p[0] for p in points]
            ax1.plot(xs, [p[1] for p in points], dash, marker="o", color=color, label=f"{label}, {size} B")
            ax2.plot(xs, [p[2] for p in points], dash, marker="o", color=color, label=f"{label}, {size} B")
    for ax, title, ylabel in (
        (ax1, "Fan-out throughput at saturation", "deliveries/s (all subscribers)"),
        (ax2, "Latency at saturation, p99", "ms (publish to WebSocket receipt)"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("subscribers (N)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(svg, format="svg")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results_dir")
    ap.add_argument("--svg", help="output SVG (default RESULTS_DIR/bench.svg)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args()
    cells = load(args.results_dir)
    if not cells:
        sys.exit(f"no results in {args.results_dir}")
    print(markdown(cells))
    if not args.no_plot:
        svg = args.svg or os.path.join(args.results_dir, "bench.svg")
        if plot(cells, svg):
            print(f"plot: {svg}", file=sys.stderr)


if __name__ == "__main__":
    main()
