#!/usr/bin/env python3
"""The README's capacity chart from the fleet simulator's capacity runs.

    scripts/fleet-chart.py OUT.svg "SQLite=target/fleet-bench/capacity.json" \
        "PostgreSQL=/tmp/pg/capacity.json" ...

Each argument is a label and a JSON report of `tern-fleet --find-capacity
--json`. The chart plots each step's p99 poll latency against the poll rate
offered (both on log scales), filled where the step held and hollow where
it failed, with the 250 ms limit and the rate of a 100,000-agent fleet at
60 s. Plain SVG, no dependency.
"""

import json
import math
import sys

W, H = 780, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 60, 60
X_MIN, X_MAX = 100.0, 10000.0
Y_MIN, Y_MAX = 1.0, 2000.0
COLOURS = ["#1b7f79", "#c8553d", "#3d5a80", "#8a6fb0", "#b08a2e"]


def x_of(rate):
    f = (math.log10(rate) - math.log10(X_MIN)) / (math.log10(X_MAX) - math.log10(X_MIN))
    return LEFT + f * (W - LEFT - RIGHT)


def y_of(ms):
    ms = min(max(ms, Y_MIN), Y_MAX)
    f = (math.log10(ms) - math.log10(Y_MIN)) / (math.log10(Y_MAX) - math.log10(Y_MIN))
    return H - BOTTOM - f * (H - TOP - BOTTOM)


def main():
    global TOP
    out, runs = sys.argv[1], sys.argv[2:]
    if not runs:
        sys.exit(__doc__)
    # Room for the legend, a line per run.
    TOP = 44 + 16 * len(runs)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
        '<text x="16" y="22" font-size="15" font-weight="bold">Poll latency p99 against poll rate '
        "(fleet simulator, 2 cores shared)</text>",
    ]
    # Grid and axes.
    for rate in [100, 200, 500, 1000, 2000, 5000, 10000]:
        x = x_of(rate)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{rate:,}</text>')
        parts.append(
            f'<text x="{x:.1f}" y="{H - BOTTOM + 30}" text-anchor="middle" fill="#777">{rate * 60 // 1000:,}k</text>'
        )
    for ms in [1, 10, 100, 1000]:
        y = y_of(ms)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{ms:,} ms</text>')
    parts.append(
        f'<text x="{(LEFT + W - RIGHT) / 2:.0f}" y="{H - 12}" text-anchor="middle">'
        "polls per second offered (grey: the fleet at 60 s intervals it stands for)</text>"
    )
    y250 = y_of(250)
    parts.append(
        f'<line x1="{LEFT}" y1="{y250:.1f}" x2="{W - RIGHT}" y2="{y250:.1f}" stroke="#333" stroke-dasharray="5,4"/>'
    )
    parts.append(f'<text x="{W - RIGHT - 4}" y="{y250 - 5:.1f}" text-anchor="end">p99 limit 250 ms</text>')
    x100k = x_of(100000 / 60)
    parts.append(
        f'<line x1="{x100k:.1f}" y1="{TOP}" x2="{x100k:.1f}" y2="{H - BOTTOM}" stroke="#333" stroke-dasharray="2,3"/>'
    )
    parts.append(f'<text x="{x100k + 4:.1f}" y="{TOP + 12}">100,000 agents at 60 s</text>')
    # One line per run.
    for i, run in enumerate(runs):
        label, path = run.split("=", 1)
        colour = COLOURS[i % len(COLOURS)]
        with open(path) as f:
            capacity = json.load(f)["capacity"]
        steps = sorted(capacity["steps"], key=lambda s: s["offered"])
        points = " ".join(f"{x_of(s['offered']):.1f},{y_of(s['p99_ms']):.1f}" for s in steps)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for s in steps:
            fill = colour if s["held"] else "#ffffff"
            parts.append(
                f'<circle cx="{x_of(s["offered"]):.1f}" cy="{y_of(s["p99_ms"]):.1f}" r="4" fill="{fill}" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
        largest = capacity.get("largest_rate") or 0
        text = f"{label}: {largest:,.0f} polls/s held, {largest * 60:,.0f} agents at 60 s"
        parts.append(f'<rect x="16" y="{32 + 16 * i}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="34" y="{42 + 16 * i}">{text}</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
