#!/usr/bin/env python3
"""bench/plot_run.py -- draw the JSON report of `dsacp run --json FILE` as one picture.

Usage:
    python3 bench/plot_run.py REPORT.json OUT.svg [--title TEXT]
    python3 bench/plot_run.py REPORT.json OUT.png [--title TEXT]   (needs rsvg-convert or convert)

The picture (1000 x 700 px) has three panels:
  top           per-step time split by phase (stacked bars, ms), with a strip under it of the
                prefill and decode tokens of each step; above ~400 steps, consecutive steps are
                averaged in buckets of K steps and the axis label says so
  bottom left   TTFT histogram (20 bins) with mean, median and p99 lines
  bottom right  TPOT histogram, the same (requests whose tpot_ms is null are left out)

Fields read (anything else in the report is ignored):
  config.world, config.model (optional, for the title), completed, duration_s (optional),
  mean/median/p99 _ttft_ms and _tpot_ms (optional: computed from the requests when absent),
  steps[].index (optional), steps[].phases_ms{name: ms}, steps[].prefill_tokens,
  steps[].decode_tokens, requests[].ttft_ms, requests[].tpot_ms (number or null).

On an error (missing file, bad JSON, missing or non-numeric field) one line naming the file
and the field goes to stderr, the exit status is 1 and no output file is written: the picture
is written to a temporary file in the output's directory and renamed into place at the end.
Python 3 standard library only.
"""

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from xml.sax.saxutils import escape

PROG = "plot_run.py"

# Phases in the order they are stacked (bottom first), each with a fixed colour.
KNOWN_PHASES = [
    ("projections", "#4e79a7"),
    ("indexer", "#f28e2b"),
    ("topk", "#e15759"),
    ("attention", "#76b7b2"),
    ("mlp", "#59a14f"),
    ("communication", "#edc948"),
    ("idle", "#d3d3d3"),
    ("other", "#9c755f"),
]
# Colours for phase names not listed above, given out in alphabetical order of the names.
EXTRA_COLOURS = ["#b07aa1", "#ff9da7", "#17becf", "#bcbd22", "#8c564b", "#1f3a93",
                 "#7f7f7f", "#2ca02c", "#d62728", "#9467bd"]
PREFILL_COLOUR = "#3b5b92"
DECODE_COLOUR = "#f4a259"
HIST_COLOUR = "#9ecae1"
STAT_STYLES = [  # (key suffix, label, colour, dash pattern)
    ("mean", "mean", "#d62728", "6,3"),
    ("median", "median", "#2ca02c", ""),
    ("p99", "p99", "#6a3d9a", "2,2"),
]
MAX_BARS = 400   # more steps than this are averaged in buckets
HIST_BINS = 20
WIDTH, HEIGHT = 1000, 700
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


class ReportError(Exception):
    """A problem with the input, reported as one line naming the file and field."""


# ---------------------------------------------------------------- reading the report

def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def get(obj, key, where, optional=False, nullable=False):
    """obj[key] as a finite number; `where` names obj in error messages (e.g. 'steps[3]')."""
    name = f"{where}.{key}" if where else key
    if not isinstance(obj, dict) or key not in obj:
        if optional:
            return None
        raise ReportError(f"missing field '{name}'")
    v = obj[key]
    if v is None and (nullable or optional):
        return None
    if not is_number(v):
        raise ReportError(f"field '{name}' is not a finite number (got {json.dumps(v)[:40]})")
    return float(v)


def get_list(obj, key):
    if key not in obj:
        raise ReportError(f"missing field '{key}'")
    if not isinstance(obj[key], list):
        raise ReportError(f"field '{key}' is not a list")
    return obj[key]


def load_report(path):
    """Read and check the report; return a dict with just what the picture needs."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ReportError("no such file")
    except OSError as e:
        raise ReportError(f"cannot read: {e.strerror}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"bad JSON: {e}")
    if not isinstance(data, dict):
        raise ReportError("bad report: the top level is not a JSON object")

    steps = []
    for i, s in enumerate(get_list(data, "steps")):
        w = f"steps[{i}]"
        if not isinstance(s, dict):
            raise ReportError(f"field '{w}' is not an object")
        if "phases_ms" not in s:
            raise ReportError(f"missing field '{w}.phases_ms'")
        ph = s["phases_ms"]
        if not isinstance(ph, dict):
            raise ReportError(f"field '{w}.phases_ms' is not an object")
        phases = {k: get(ph, k, f"{w}.phases_ms") for k in ph}
        idx = get(s, "index", w, optional=True)
        steps.append({
            "index": int(idx) if idx is not None else i,
            "phases": phases,
            "prefill": get(s, "prefill_tokens", w),
            "decode": get(s, "decode_tokens", w),
        })

    ttft, tpot, no_tpot = [], [], 0
    for i, r in enumerate(get_list(data, "requests")):
        w = f"requests[{i}]"
        if not isinstance(r, dict):
            raise ReportError(f"field '{w}' is not an object")
        ttft.append(get(r, "ttft_ms", w))
        t = get(r, "tpot_ms", w, nullable=True)
        if t is not None:
            tpot.append(t)
        else:
            no_tpot += 1

    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    completed = get(data, "completed", "", optional=True)
    return {
        "config": config,
        "completed": int(completed) if completed is not None else len(ttft),
        "duration_s": get(data, "duration_s", "", optional=True),
        "steps": steps,
        "ttft": ttft,
        "tpot": tpot,
        "no_tpot": no_tpot,
        "ttft_stats": stats_of(data, "ttft", ttft),
        "tpot_stats": stats_of(data, "tpot", tpot),
    }


def percentile(values, p):
    """Linear-interpolated percentile (0..100) of a non-empty list."""
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def stats_of(data, metric, values):
    """mean/median/p99 for a metric: the report's numbers, or computed from the values."""
    out = {}
    for key in ("mean", "median", "p99"):
        v = get(data, f"{key}_{metric}_ms", "", optional=True)
        if v is None and values:
            v = {"mean": statistics.fmean, "median": statistics.median,
                 "p99": lambda x: percentile(x, 99)}[key](values)
        out[key] = v
    return out


# ---------------------------------------------------------------- numbers and scales

def fmt(v):
    """A short readable number: 1.2M, 35k, 850, 12.5, 0.35."""
    a = abs(v)
    if a >= 1e6:
        s = f"{v / 1e6:.3g}M"
    elif a >= 1e4:
        s = f"{v / 1e3:.3g}k"
    elif a >= 100 or a == 0:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.2g}"
    if "." in s and "e" not in s:  # drop trailing zeros: 12.50 -> 12.5, 2.00 -> 2
        num = s.rstrip("kM")
        suffix = s[len(num):]
        s = num.rstrip("0").rstrip(".") + suffix
    return s


def nice_ticks(lo, hi, n=5):
    """About n round tick values covering [lo, hi]; returns (ticks, new_lo, new_hi)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    end = math.ceil(hi / step - 1e-9) * step
    count = int(round((end - start) / step))
    ticks = [start + i * step for i in range(count + 1)]
    return ticks, start, end


class Scale:
    """Linear map from data [d0, d1] to pixels [p0, p1]."""

    def __init__(self, d0, d1, p0, p1):
        self.d0, self.d1, self.p0, self.p1 = d0, d1, p0, p1

    def __call__(self, v):
        if self.d1 == self.d0:
            return self.p0
        return self.p0 + (v - self.d0) * (self.p1 - self.p0) / (self.d1 - self.d0)


# ---------------------------------------------------------------- SVG drawing

class Svg:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.parts = []

    def add(self, s):
        self.parts.append(s)

    def rect(self, x, y, w, h, fill, stroke=None, extra=""):
        st = f' stroke="{stroke}" stroke-width="0.6"' if stroke else ""
        self.add(f'<rect x="{x:.2f}" y="{y:.2f}" width="{max(w, 0):.2f}" '
                 f'height="{max(h, 0):.2f}" fill="{fill}"{st}{extra}/>')

    def line(self, x1, y1, x2, y2, stroke="#000", width=1.0, dash=""):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.2f}" y1="{y1:.2f}" x2="{x2:.2f}" y2="{y2:.2f}" '
                 f'stroke="{stroke}" stroke-width="{width}"{d}/>')

    def text(self, x, y, s, size=11, anchor="start", weight="normal", fill="#222",
             rotate=None):
        tr = f' transform="rotate({rotate} {x:.2f} {y:.2f})"' if rotate is not None else ""
        self.add(f'<text x="{x:.2f}" y="{y:.2f}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{fill}"{tr}>{escape(str(s))}</text>')

    def render(self):
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" font-family="{FONT}">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n'
                + "\n".join(self.parts) + "\n</svg>\n")


def text_width(s, size):
    """Rough width in pixels of a text in a sans-serif font."""
    return 0.58 * size * len(s)


def axes(svg, box, xscale, yscale, xticks, yticks, xlabel=None, ylabel=None,
         xfmt=fmt, show_xticks=True):
    """Frame, grid lines, ticks and labels for a plot area box = (left, top, right, bottom)."""
    l, t, r, b = box
    for v in yticks:
        y = yscale(v)
        svg.line(l, y, r, y, "#e6e6e6", 0.8)
        svg.line(l - 4, y, l, y, "#444")
        svg.text(l - 6, y + 3.5, fmt(v), 10, "end")
    if show_xticks:
        for v in xticks:
            x = xscale(v)
            svg.line(x, b, x, b + 4, "#444")
            svg.text(x, b + 15, xfmt(v), 10, "middle")
    svg.add(f'<rect x="{l}" y="{t}" width="{r - l}" height="{b - t}" fill="none" '
            f'stroke="#444" stroke-width="1"/>')
    if xlabel:
        svg.text((l + r) / 2, b + 31, xlabel, 11, "middle")
    if ylabel:
        svg.text(l - 44, (t + b) / 2, ylabel, 11, "middle", rotate=-90)


def empty_panel(svg, box, message):
    l, t, r, b = box
    svg.add(f'<rect x="{l}" y="{t}" width="{r - l}" height="{b - t}" fill="#fafafa" '
            f'stroke="#bbb" stroke-width="1"/>')
    svg.text((l + r) / 2, (t + b) / 2, message, 12, "middle", fill="#777")


def phase_order(steps):
    """Phase names present in any step: known ones in fixed order, then the rest by name."""
    present = set()
    for s in steps:
        present.update(s["phases"])
    known = [name for name, _ in KNOWN_PHASES if name in present]
    extra = sorted(present - {name for name, _ in KNOWN_PHASES})
    colours = dict(KNOWN_PHASES)
    for i, name in enumerate(extra):
        colours[name] = EXTRA_COLOURS[i % len(EXTRA_COLOURS)]
    return known + extra, colours


def bucket_steps(steps, names):
    """Average consecutive steps in buckets when there are more than MAX_BARS of them.

    Returns (bars, k): each bar has x0, x1 (step-index span), per-phase ms, prefill, decode,
    all as means per step over the bucket; k is the number of steps per bucket (1: none).
    """
    k = max(1, math.ceil(len(steps) / MAX_BARS))
    bars = []
    for i in range(0, len(steps), k):
        chunk = steps[i:i + k]
        n = len(chunk)
        bars.append({
            "x0": chunk[0]["index"],
            "x1": chunk[-1]["index"] + 1,
            "phases": {p: sum(s["phases"].get(p, 0.0) for s in chunk) / n for p in names},
            "prefill": sum(s["prefill"] for s in chunk) / n,
            "decode": sum(s["decode"] for s in chunk) / n,
        })
    return bars, k


def draw_steps(svg, steps, box_ms, box_tok, legend_x):
    """Top panel: stacked phase bars per step, and a prefill/decode token strip under them."""
    if not steps:
        empty_panel(svg, (box_ms[0], box_ms[1], box_tok[2], box_tok[3]), "no steps in the report")
        return
    names, colours = phase_order(steps)
    bars, k = bucket_steps(steps, names)

    x_lo, x_hi = min(b["x0"] for b in bars), max(b["x1"] for b in bars)
    xticks, _, _ = nice_ticks(x_lo, x_hi, 10)
    xticks = [v for v in xticks if x_lo <= v <= x_hi and v == int(v)] or [x_lo, x_hi]
    l, t, r, b = box_ms
    xs = Scale(x_lo, x_hi, l, r)

    # Phase time.
    top_ms = max((sum(bar["phases"].values()) for bar in bars), default=0.0)
    yticks, _, y_hi = nice_ticks(0.0, top_ms * 1.05 if top_ms > 0 else 1.0, 5)
    ys = Scale(0.0, y_hi, b, t)
    ylabel = "ms per step" + (" (bucket mean)" if k > 1 else "")
    axes(svg, box_ms, xs, ys, xticks, yticks, ylabel=ylabel, show_xticks=False)
    svg.add('<g shape-rendering="crispEdges">')  # no anti-aliased seams between thin bars
    for bar in bars:
        x0, x1 = xs(bar["x0"]), xs(bar["x1"])
        gap = 0.15 * (x1 - x0) if x1 - x0 > 4 else 0.0
        acc = 0.0
        for p in names:
            v = bar["phases"][p]
            if v <= 0:
                continue
            svg.rect(x0 + gap / 2, ys(acc + v), x1 - x0 - gap, ys(acc) - ys(acc + v), colours[p])
            acc += v
    svg.add('</g>')
    svg.text(l, t - 6, "Step time by phase", 12, weight="bold")

    # Legend for the phases, to the right of the plot.
    svg.text(legend_x, t + 4, "phase", 11, weight="bold")
    for i, p in enumerate(names):
        y = t + 20 + i * 17
        svg.rect(legend_x, y - 9, 12, 12, colours[p], stroke="#555")
        svg.text(legend_x + 18, y + 1, p, 11)

    # Tokens per step.
    l2, t2, r2, b2 = box_tok
    top_tok = max((bar["prefill"] + bar["decode"] for bar in bars), default=0.0)
    tticks, _, t_hi = nice_ticks(0.0, top_tok if top_tok > 0 else 1.0, 2)
    ts = Scale(0.0, t_hi, b2, t2)
    xlabel = "step index"
    if k > 1:
        xlabel += f" ({len(steps)} steps averaged in buckets of {k}; values are means per step)"
    axes(svg, box_tok, xs, ts, xticks, tticks, xlabel=xlabel, ylabel="tokens")
    svg.add('<g shape-rendering="crispEdges">')
    for bar in bars:
        x0, x1 = xs(bar["x0"]), xs(bar["x1"])
        gap = 0.15 * (x1 - x0) if x1 - x0 > 4 else 0.0
        pre, dec = bar["prefill"], bar["decode"]
        if pre > 0:
            svg.rect(x0 + gap / 2, ts(pre), x1 - x0 - gap, ts(0) - ts(pre), PREFILL_COLOUR)
        if dec > 0:
            svg.rect(x0 + gap / 2, ts(pre + dec), x1 - x0 - gap, ts(pre) - ts(pre + dec),
                     DECODE_COLOUR)
    svg.add('</g>')
    svg.text(legend_x, t2 + 4, "tokens", 11, weight="bold")
    for i, (name, colour) in enumerate((("prefill", PREFILL_COLOUR), ("decode", DECODE_COLOUR))):
        y = t2 + 20 + i * 17
        svg.rect(legend_x, y - 9, 12, 12, colour, stroke="#555")
        svg.text(legend_x + 18, y + 1, name, 11)


def draw_histogram(svg, box, values, stats, title, skipped_note=""):
    """A histogram of `values` (ms) with labelled mean / median / p99 lines."""
    l, t, r, b = box
    head = f"{title} (n={len(values)}{skipped_note})"
    svg.text(l, t - 24, head, 12, weight="bold")
    if not values:
        empty_panel(svg, box, "no values")
        return

    # Stat values on one line under the panel title.
    x = l
    for key, label, colour, dash in STAT_STYLES:
        v = stats.get(key)
        if v is None:
            continue
        svg.line(x, t - 10, x + 18, t - 10, colour, 2, dash)
        s = f"{label} {fmt(v)} ms"
        svg.text(x + 22, t - 6, s, 10.5)
        x += 22 + text_width(s, 10.5) + 14

    marks = [v for v in stats.values() if v is not None]
    lo, hi = min(values + marks), max(values + marks)
    if hi - lo < 1e-9:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    xticks, x_lo, x_hi = nice_ticks(lo, hi, 6)
    width = (hi - lo) / HIST_BINS
    counts = [0] * HIST_BINS
    for v in values:
        counts[min(int((v - lo) / width), HIST_BINS - 1)] += 1
    yticks, _, y_hi = nice_ticks(0, max(counts) * 1.12, 4)
    yticks = [v for v in yticks if v == int(v)] or [0, y_hi]
    xs = Scale(x_lo, x_hi, l, r)
    ys = Scale(0, y_hi, b, t)
    axes(svg, box, xs, ys, xticks, yticks, xlabel=f"{title} (ms)", ylabel="requests")
    for i, c in enumerate(counts):
        if c:
            x0, x1 = xs(lo + i * width), xs(lo + (i + 1) * width)
            svg.rect(x0, ys(c), x1 - x0, ys(0) - ys(c), HIST_COLOUR, stroke="#4a7fb0")

    # Lines, each with a short label at the top, stepped down so labels never overlap.
    for i, (key, label, colour, dash) in enumerate(STAT_STYLES):
        v = stats.get(key)
        if v is None:
            continue
        xv = xs(v)
        svg.line(xv, t, xv, b, colour, 1.8, dash)
        right = xv + 4 + text_width(label, 10) <= r
        svg.text(xv + 4 if right else xv - 4, t + 12 + 12 * i, label, 10,
                 "start" if right else "end", weight="bold", fill=colour)


def title_of(rep):
    cfg = rep["config"]
    parts = []
    if cfg.get("model") is not None:
        parts.append(f"{cfg['model']} model")
    world = cfg.get("world")
    if world is not None:
        parts.append(f"{world} rank" + ("" if world == 1 else "s"))
    n = rep["completed"]
    parts.append(f"{n} request" + ("" if n == 1 else "s"))
    if rep["duration_s"] is not None:
        parts.append(f"{fmt(rep['duration_s'])} s")
    parts.append(f"{len(rep['steps'])} step" + ("" if len(rep["steps"]) == 1 else "s"))
    return "dsacp run: " + ", ".join(parts)


def make_svg(rep, title):
    svg = Svg(WIDTH, HEIGHT)
    svg.text(WIDTH / 2, 26, title, 16, "middle", weight="bold")
    # Top: plot area 70..850 px wide, legend right of it; the token strip sits under the bars.
    draw_steps(svg, rep["steps"], box_ms=(70, 62, 850, 282), box_tok=(70, 302, 850, 372),
               legend_x=868)
    note = f", {rep['no_tpot']} without TPOT" if rep["no_tpot"] else ""
    draw_histogram(svg, (70, 470, 470, 650), rep["ttft"], rep["ttft_stats"], "TTFT")
    draw_histogram(svg, (570, 470, 970, 650), rep["tpot"], rep["tpot_stats"], "TPOT", note)
    return svg.render()


# ---------------------------------------------------------------- main

def find_converter():
    """A command list that turns an SVG into a PNG, or None."""
    if shutil.which("rsvg-convert"):
        return lambda src, dst: ["rsvg-convert", "-f", "png", "-o", dst, src]
    for conv in ("/usr/bin/convert", shutil.which("convert")):
        if conv and os.path.exists(conv):
            return lambda src, dst, c=conv: [c, "-density", "96", "svg:" + src, "png:" + dst]
    return None


def write_output(svg_text, out):
    """Write the SVG (or its PNG) to a temporary in out's directory, then rename it into place."""
    directory = os.path.dirname(os.path.abspath(out))
    png = out.lower().endswith(".png")
    tmp_svg = tmp_png = None
    try:
        fd, tmp_svg = tempfile.mkstemp(suffix=".svg", prefix=".plot_run.", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(svg_text)
        if not png:
            os.chmod(tmp_svg, 0o644)
            os.replace(tmp_svg, out)
            tmp_svg = None
            return
        fd, tmp_png = tempfile.mkstemp(suffix=".png", prefix=".plot_run.", dir=directory)
        os.close(fd)
        cmd = find_converter()(tmp_svg, tmp_png)
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if res.returncode != 0 or os.path.getsize(tmp_png) == 0:
            why = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[0]
            raise ReportError(f"{cmd[0]} failed to make the PNG: {why}")
        os.chmod(tmp_png, 0o644)
        os.replace(tmp_png, out)
        tmp_png = None
    finally:
        for p in (tmp_svg, tmp_png):
            if p and os.path.exists(p):
                os.unlink(p)


def usage_error(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)
    print("usage: python3 bench/plot_run.py REPORT.json OUT.svg|OUT.png [--title TEXT]",
          file=sys.stderr)
    sys.exit(2)


def main(argv):
    args, title = [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        if a == "--title":
            if i + 1 >= len(argv):
                usage_error("--title needs a value")
            title = argv[i + 1]
            i += 2
            continue
        if a.startswith("--title="):
            title = a.split("=", 1)[1]
        elif a.startswith("-") and a != "-":
            usage_error(f"unknown option '{a}'")
        else:
            args.append(a)
        i += 1
    if len(args) != 2:
        usage_error("expected REPORT.json and OUT.svg")
    report, out = args

    if out.lower().endswith(".png") and find_converter() is None:
        print(f"{PROG}: {out}: writing a PNG needs rsvg-convert (apt-get install -y librsvg2-bin) "
              f"or ImageMagick's convert; write an .svg instead", file=sys.stderr)
        return 1
    try:
        rep = load_report(report)
    except ReportError as e:
        print(f"{PROG}: {report}: {e}", file=sys.stderr)
        return 1
    try:
        write_output(make_svg(rep, title if title is not None else title_of(rep)), out)
    except ReportError as e:
        print(f"{PROG}: {out}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: {out}: cannot write: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
