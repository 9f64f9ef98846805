"""Draws bench/side_by_side.sh's results as a PNG: output tokens/s and TTFT p50 against concurrency,
each server a line (two panels, concurrency on a log-2 axis), titled with the model, rillet's flags
and the CPU from the run's "setup" line.

    python bench/chart.py bench/results/side_by_side-2026-12-01-101500.jsonl -o chart.png
    bash bench/side_by_side.sh 1 | python bench/chart.py -o chart.png      (JSON lines on stdin)
    python bench/chart.py run1.jsonl run2.jsonl run3.jsonl -o chart.png      (several runs: medians)

It reads the JSON lines side_by_side.sh prints (lines that are not JSON objects are skipped): each
server's bench/serve.py levels ("server", "concurrency", "output_tokens_per_s", "ttft_ms_p50"), its
long-prompt TTFT and resident set (written under the panels), and the setup line. Where a level
was measured more than once (several files, or several runs in one), the line joins the medians
and every run is a dot.

    python bench/chart.py --setup model=NAME rillet_args="..."       (side_by_side.sh's setup line)

prints that setup line: the given fields, the date, and the CPU (lscpu's model name, family and
model numbers, CPU count, and whether AVX-512 and VNNI are present). Drawing needs matplotlib (the
`bench` extra: `make bench-install`); --setup does not.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

COLORS = {"rillet": "#1f77b4"}  # rillet keeps its colour; peers take the next ones
PEER_COLORS = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def cpu() -> dict:
    """This machine's CPU as lscpu (or /proc/cpuinfo) describes it."""
    fields: dict[str, str] = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                              env={**os.environ, "LC_ALL": "C"}).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first "Model name" (BIOS's comes later)
    except (OSError, subprocess.CalledProcessError):
        pass
    if "Flags" not in fields or "Model name" not in fields:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                key = {"model name": "Model name", "flags": "Flags", "cpu family": "CPU family",
                       "model": "Model"}.get(key.strip(), key.strip())
                fields.setdefault(key, value.strip())
        except OSError:
            pass
    flags = set(fields.get("Flags", "").split())
    return {"cpu": fields.get("Model name", "unknown CPU"), "cpu_family": fields.get("CPU family"),
            "cpu_model": fields.get("Model"), "cpus": os.cpu_count(), "avx512": "avx512f" in flags,
            "avx512_vnni": "avx512_vnni" in flags, "avx2": "avx2" in flags}


def setup_line(pairs: list[str]) -> dict:
    fields = dict(pair.split("=", 1) for pair in pairs)
    return {"measure": "setup", "date": datetime.datetime.now().isoformat(timespec="seconds"), **fields, **cpu()}


def read_lines(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths or ["-"]:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def collect(rows: list[dict]) -> dict:
    """{"setups": [...], "levels": {server: {concurrency: [row, ...]}}, "long_prompt": {server: [s]},
    "rss": {server: {"loaded": [...], "after": [...]}}, "prompt_tokens": the long prompt's}, servers
    in the order they first appear."""
    levels: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    long_prompt: dict[str, list[float]] = defaultdict(list)
    rss: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    setups, prompt_tokens = [], []
    for row in rows:
        server = row.get("server")
        if row.get("measure") == "setup":
            setups.append(row)
        elif server and "concurrency" in row and "output_tokens_per_s" in row:
            levels[server][int(row["concurrency"])].append(row)
        elif server and row.get("measure") == "long_prompt_ttft" and row.get("ttft_s_median") is not None:
            long_prompt[server].append(row["ttft_s_median"])
            prompt_tokens.append(row.get("prompt_tokens"))
        elif server and "rss_mb_loaded" in row:
            rss[server]["loaded"].append(row["rss_mb_loaded"])
        elif server and "rss_mb_after_load" in row:
            rss[server]["after"].append(row["rss_mb_after_load"])
    return {"setups": setups, "levels": levels, "long_prompt": long_prompt, "rss": rss,
            "prompt_tokens": next((n for n in prompt_tokens if n), None)}


def describe_cpu(setup: dict) -> str:
    name = setup.get("cpu", "unknown CPU")
    if setup.get("cpu_family"):
        name += f" (family {setup['cpu_family']}" + (f" model {setup['cpu_model']})" if setup.get("cpu_model") else ")")
    if setup.get("cpus"):
        name += f", {setup['cpus']} CPUs"
    if setup.get("avx512"):
        name += ", AVX-512" + (" with VNNI" if setup.get("avx512_vnni") else "")
    else:
        name += ", no AVX-512" + (" (AVX2)" if setup.get("avx2") else "")
    return name


def title_of(data: dict, servers: list[str]) -> str:
    setups = data["setups"]
    if setups:
        setup = setups[0]
        machine = describe_cpu(setup)
    else:  # results written before side_by_side.sh recorded its setup: this machine, said so
        setup = {}
        machine = describe_cpu(cpu()) + " (this machine: the results do not say)"
    model = setup.get("model", "model not recorded")
    flags = setup.get("rillet_args", "").strip() or "defaults"
    lines = [f"{' vs '.join(servers)}: {model}",
             f"rillet flags: {flags}" + (f"; peer flags: {setup['peer_args']}" if setup.get("peer_args") else ""),
             machine]
    detail = []
    if setup.get("max_tokens"):
        detail.append(f"streaming, max_tokens {setup['max_tokens']}")
    if setup.get("rounds"):
        detail.append(f"{setup['rounds']} request{'s' if str(setup['rounds']) != '1' else ''} per client per level")
    if len(setups) > 1:
        detail.append(f"medians of {len(setups)} runs")
    if setup.get("date"):
        detail.append(setup["date"][:10] + ("" if len(setups) < 2 else f" to {setups[-1].get('date', '')[:10]}"))
    if detail:
        lines.append(", ".join(detail))
    return "\n".join(lines)


def footnote_of(data: dict, servers: list[str]) -> str:
    parts = []
    prompt = [f"{s} {statistics.median(data['long_prompt'][s]):.2f} s" for s in servers if data["long_prompt"].get(s)]
    if prompt:
        tokens = f"{data['prompt_tokens']:,}-token" if data.get("prompt_tokens") else "long"
        parts.append(f"TTFT of a {tokens} prompt (median): " + ", ".join(prompt))
    rss = [f"{s} {statistics.median(data['rss'][s]['after']):.0f} MB" for s in servers if data["rss"].get(s, {}).get("after")]
    if rss:
        parts.append("resident set after the load: " + ", ".join(rss))
    return "  |  ".join(parts)


def number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def label_values(fig, medians_by_panel: list, colors: dict[str, str]) -> None:
    """Each median's value beside its point: above where it is the highest at its concurrency, else
    below, or beside it where below would cross the panel's bottom edge."""
    points = fig.dpi / 72
    for ax, medians_of in medians_by_panel:
        bottom = ax.transData.transform((1, ax.get_ylim()[0]))[1]
        for server, medians in medians_of.items():
            for x, y in medians.items():
                highest = y >= max(m[x] for m in medians_of.values() if x in m)
                room = (ax.transData.transform((x, y))[1] - bottom) / points  # to the bottom edge, in points
                if highest:
                    offset, align = (0, 7), "center"
                elif room > 16:
                    offset, align = (0, -13), "center"
                elif x < max(medians):  # beside the point, on the side away from the panel's edge
                    offset, align = (7, -3), "left"
                else:
                    offset, align = (-7, -3), "right"
                ax.annotate(number(y), (x, y), textcoords="offset points", xytext=offset, ha=align, fontsize=8,
                            color=colors[server])


def draw(data: dict, output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator, ScalarFormatter

    levels = data["levels"]
    servers = list(levels)
    if not servers:
        raise SystemExit("chart.py: no bench/serve.py levels (lines with server, concurrency, output_tokens_per_s)")
    colors = dict(COLORS)
    for server in servers:
        if server not in colors:
            colors[server] = PEER_COLORS[(len(colors) - 1) % len(PEER_COLORS)]
    fig, (tps_ax, ttft_ax) = plt.subplots(1, 2, figsize=(12, 5.6))
    panels = ((tps_ax, "output_tokens_per_s", 1.0, "output tokens/s (all clients)"),
              (ttft_ax, "ttft_ms_p50", 1e-3, "time to first token, p50 (s)"))
    concurrencies = sorted({c for server in servers for c in levels[server]})
    ttft_values, medians_by_panel = [], []
    for ax, field, scale, label in panels:
        medians_of = {}  # server -> {concurrency: median}
        for server in servers:
            medians_of[server] = {}
            for concurrency in sorted(levels[server]):
                values = [row[field] * scale for row in levels[server][concurrency] if row.get(field) is not None]
                if not values:
                    continue
                medians_of[server][concurrency] = statistics.median(values)
                if len(values) > 1:
                    ax.scatter([concurrency] * len(values), values, s=14, color=colors[server], alpha=0.35, zorder=2)
                if field == "ttft_ms_p50":
                    ttft_values.extend(values)
            xs = list(medians_of[server])
            ax.plot(xs, [medians_of[server][x] for x in xs], marker="o", color=colors[server], label=server,
                    linewidth=2, zorder=3)
        medians_by_panel.append((ax, medians_of))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(concurrencies))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        if len(concurrencies) == 1:
            ax.set_xlim(concurrencies[0] / 2, concurrencies[0] * 2)
        ax.set_xlabel("concurrent streaming clients")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="best")
    tps_ax.set_ylim(0, max(tps_ax.get_ylim()[1], 1) * 1.08)
    tps_ax.set_title("throughput (higher is better)", fontsize=10)
    positive = [v for v in ttft_values if v > 0]
    if positive and max(positive) / min(positive) > 30:
        ttft_ax.set_yscale("log")
        ttft_ax.set_ylim(min(positive) / 2, max(positive) * 2)
        ttft_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ttft_ax.set_ylabel("time to first token, p50 (s, log scale)")
    else:
        ttft_ax.set_ylim(0, max(ttft_ax.get_ylim()[1], 0.001) * 1.08)
    ttft_ax.set_title("time to first token (lower is better)", fontsize=10)
    fig.suptitle(title_of(data, servers), fontsize=10)
    footnote = footnote_of(data, servers)
    if footnote:
        fig.text(0.5, 0.01, footnote, ha="center", va="bottom", fontsize=8.5)
    fig.tight_layout(rect=(0, 0.04 if footnote else 0, 1, 1))
    label_values(fig, medians_by_panel, colors)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="JSON lines of bench/side_by_side.sh (default or '-': stdin)")
    parser.add_argument("-o", "--output", default="side_by_side.png", help="the PNG to write")
    parser.add_argument("--setup", nargs="*", metavar="KEY=VALUE",
                        help="print side_by_side.sh's setup line (these fields, the date, the CPU) and exit")
    args = parser.parse_args()
    if args.setup is not None:
        print(json.dumps(setup_line(args.setup)))
        return
    draw(collect(read_lines(args.files)), args.output)
    print(f"chart written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
