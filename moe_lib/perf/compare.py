"""Two benchmark records side by side: µs per (tp, M) and the ratio, for A/B runs of two versions.

    python -m moe_lib.perf.compare --baseline old1.json old2.json --other new1.json new2.json

Each file is what ``python -m moe_lib.perf.bench`` writes; only one impl's records are compared (``moe_lib``);
several files per side give the median of each point.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def times(path: str | Path, impl: str = "moe_lib") -> dict[tuple[int, int], float]:
    """{(tp, M): µs} of one record file."""
    run = json.loads(Path(path).read_text())
    return {(r["tp"], r["M"]): r["us"] for r in run["records"] if r["impl"] == impl and r.get("us")}


def compare(baseline: list[str], other: list[str], impl: str = "moe_lib") -> list[dict]:
    """Per point: the median µs of each side and other / baseline."""
    sides = [[times(p, impl) for p in files] for files in (baseline, other)]
    points = sorted(set.intersection(*(set(t) for side in sides for t in side)))
    rows = []
    for point in points:
        a, b = (statistics.median(t[point] for t in side) for side in sides)
        rows.append({"tp": point[0], "M": point[1], "baseline_us": a, "other_us": b, "ratio": b / a})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", nargs="+", required=True, help="record files of the baseline version")
    p.add_argument("--other", nargs="+", required=True, help="record files of the version compared")
    p.add_argument("--impl", default="moe_lib")
    a = p.parse_args(argv)
    rows = compare(a.baseline, a.other, a.impl)
    print(f"{'tp':>3} {'M':>5} {'baseline us':>12} {'other us':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['tp']:>3} {r['M']:>5} {r['baseline_us']:>12.2f} {r['other_us']:>10.2f} {r['ratio']:>7.3f}")
    if rows:
        ratios = [r["ratio"] for r in rows]
        geo = statistics.geometric_mean(ratios)
        print(f"geometric mean ratio {geo:.3f}, range {min(ratios):.3f} .. {max(ratios):.3f} over {len(rows)} points")


if __name__ == "__main__":
    main()
