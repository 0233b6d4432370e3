#!/usr/bin/env python3
"""The README's held-session chart from a run of scripts/session-nat.sh.

    JSON=/tmp/nat.json sudo scripts/session-nat.sh
    scripts/session-nat-chart.py OUT.svg /tmp/nat.json BASELINE_BYTES_PER_DAY

For each NAT timeout of the run, three bars of bytes per idle day on a log
scale: tern holding a session, tern polling at 60 s (both measured behind
that NAT in the run), and the Portainer-style baseline polling at 60 s on a
kept-alive connection, which no NAT of 2 minutes or more breaks, so one
figure for every NAT: the on-wire benchmark's aged idle poll times 1,440
(`tern-bench wire`, "Portainer-style, host aged"), given on the command
line. The issue's targets (120 KB a day behind a 5-minute NAT, 30 KB behind
a 30-minute one) are marked. Plain SVG, no dependency.
"""

import json
import math
import sys

W, H = 780, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 70, 60
Y_MIN, Y_MAX = 1_000.0, 10_000_000.0
SERIES = [
    ("tern, held session", "#1b7f79"),
    ("tern, polling at 60 s", "#3d5a80"),
    ("Portainer-style, polling at 60 s (host aged)", "#c8553d"),
]
TARGETS = {300: 120_000, 1800: 30_000}


def y_of(b):
    b = min(max(b, Y_MIN), Y_MAX)
    f = (math.log10(b) - math.log10(Y_MIN)) / (math.log10(Y_MAX) - math.log10(Y_MIN))
    return H - BOTTOM - f * (H - TOP - BOTTOM)


def human(b):
    if b >= 1_000_000:
        return f"{b / 1_000_000:.2f} MB"
    if b >= 1_000:
        return f"{b / 1_000:.1f} KB"
    return f"{b} B"


def nat_label(s):
    return f"{s // 3600} h" if s >= 3600 and s % 3600 == 0 else f"{s // 60} min"


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    out, path, baseline = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(path) as f:
        run = json.load(f)
    rows = run["rows"]
    if not rows:
        sys.exit(f"{path}: no rows")
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">'
        "Bytes per idle day behind a carrier NAT (log scale)</text>",
    ]
    # legend
    lx = LEFT
    for name, colour in SERIES:
        svg.append(f'<rect x="{lx}" y="34" width="12" height="12" fill="{colour}"/>')
        svg.append(f'<text x="{lx + 16}" y="44">{name}</text>')
        lx += 16 + 7 * len(name) + 20
    # axis and grid
    for e in range(3, 8):
        v = 10.0**e
        y = y_of(v)
        svg.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{human(int(v))}</text>')
    svg.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#333"/>')
    group = (W - LEFT - RIGHT) / len(rows)
    bar = group / 5
    for i, row in enumerate(rows):
        x0 = LEFT + i * group + bar
        values = [row["session"]["bytes_per_day"], row["polling"]["bytes_per_day"], baseline]
        for j, ((_, colour), v) in enumerate(zip(SERIES, values)):
            x = x0 + j * bar
            y = y_of(v)
            svg.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{H - BOTTOM - y:.1f}" fill="{colour}"/>'
            )
            svg.append(f'<text x="{x + bar / 2 - 1:.1f}" y="{y - 4:.1f}" text-anchor="middle" font-size="10">{human(v)}</text>')
        target = TARGETS.get(row["nat_s"])
        if target:
            y = y_of(target)
            svg.append(
                f'<line x1="{x0 - 4:.1f}" x2="{x0 + 3 * bar + 2:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                'stroke="#000" stroke-dasharray="4 3"/>'
            )
            svg.append(f'<text x="{x0 + 3 * bar + 4:.1f}" y="{y + 4:.1f}" font-size="10">target</text>')
        svg.append(
            f'<text x="{LEFT + i * group + group / 2:.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">'
            f'NAT {nat_label(row["nat_s"])}</text>'
        )
    svg.append(
        f'<text x="{W / 2}" y="{H - 14}" text-anchor="middle" font-size="11" fill="#555">'
        f"scripts/session-nat.sh at {run['scale']}x, every IP byte on the agent's link; baseline from tern-bench wire</text>"
    )
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
