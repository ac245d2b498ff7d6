"""The benchmark's output: one table (figure | hoard | peer | nginx | ratio | target), the JSON
file a later run is compared with, and that comparison."""

import glob
import json
import os


class Row:
    """One figure. `ratio` is hoard's value over the reference named by `ratio_of`."""

    def __init__(self, key, figure, unit, hoard=None, peer=None, nginx=None, ratio=None,
                 ratio_of=None, target=None, met=None, note=None, raw=None):
        self.key = key
        self.figure = figure
        self.unit = unit
        self.hoard = hoard
        self.peer = peer
        self.nginx = nginx
        self.ratio = ratio
        self.ratio_of = ratio_of
        self.target = target
        self.met = met
        self.note = note
        self.raw = raw or {}

    def as_json(self):
        return {k: getattr(self, k) for k in
                ("figure", "unit", "hoard", "peer", "nginx", "ratio", "ratio_of", "target", "met",
                 "note", "raw")}


def fmt(value):
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2g}"


def fmt_ratio(row):
    if row.ratio is None:
        return "–"
    return f"{fmt(row.ratio)}× {row.ratio_of}" if row.ratio_of else fmt(row.ratio)


def verdict(row):
    if row.target is None:
        return "–"
    mark = {True: "met", False: "MISSED", None: "n/a"}[row.met]
    return f"{row.target} ({mark})"


def table(rows):
    """A Markdown table, aligned for the terminal as well."""
    header = ["figure", "hoard", "peer", "nginx", "ratio", "target"]
    body = [[f"{r.figure} [{r.unit}]" if r.unit else r.figure, fmt(r.hoard), fmt(r.peer),
             fmt(r.nginx), fmt_ratio(r), verdict(r)] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(cells) for cells in body]
    return "\n".join(out)


def latest(results_dir):
    files = sorted(glob.glob(os.path.join(results_dir, "*.json")))
    return files[-1] if files else None


def write(results_dir, stamp, meta, rows):
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{stamp}.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "figures": {r.key: r.as_json() for r in rows}}, f, indent=2)
        f.write("\n")
    return path


def compare(previous_path, rows):
    """Lines saying how each of hoard's figures moved since the previous run's JSON."""
    try:
        with open(previous_path) as f:
            prev = json.load(f)["figures"]
    except (OSError, ValueError, KeyError) as e:
        return [f"(cannot read {previous_path}: {e})"]
    out = []
    for r in rows:
        old = prev.get(r.key, {}).get("hoard")
        if isinstance(old, (int, float)) and isinstance(r.hoard, (int, float)) and old:
            change = (r.hoard - old) / old * 100
            out.append(f"  {r.figure} [{r.unit}]: {fmt(old)} -> {fmt(r.hoard)} ({change:+.0f}%)")
    return out
