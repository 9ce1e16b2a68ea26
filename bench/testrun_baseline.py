"""The tc program's cost per packet against the program issue 15's figures were taken
on, both measured in one run, rounds alternating.

Issue 15 set its per-packet targets (new flow <= 300 ns, conntrack hit <= 150 ns) against
figures of its day: 646-742 and 190-195 ns (README at BASELINE_REV). The same program
measures far slower on this machine today (BPF_PROG_TEST_RUN itself reports ~80 ns for an
empty program), so those absolute figures no longer compare with anything measured now.
This bench exports the baseline's tree from git, times it and today's program the same
way (IPv4, 10 Services, single runs on fresh packet copies, medians), alternately, and
prints today's figures as ratios to the baseline's beside the targets as ratios to the
issue's own figures.

    python -m bench.testrun_baseline [--rev REV] [--rounds 3] [--count 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# The tree whose README gave the "today" figures (new flow 646 / 742 and
# conntrack hit 190 / 195 ns at 10 / 10,000 Services).
BASELINE_REV = "5b41b6b"
# Issue 15's targets, as ratios to the figures it was set against (10 Services).
TARGET_RATIOS = {"new_flow": 300 / 646, "ct_hit": 150 / 190}
KINDS = ("new_flow", "ct_hit", "reply", "pass_through")
SCALE = 10
ROOT = Path(__file__).resolve().parent.parent

# Each tree's own testrun, in a child whose imports are that tree's: the baseline's
# lives in bench.datapath, today's in bench.testrun (its IPv4 rows).
_RUN = (
    "import json\n"
    "from {module} import testrun_cost\n"
    "row = testrun_cost(({n},), {count})['scales']['{n}']\n"
    "print(json.dumps({{k: row[k]['ns_per_packet'] for k in {kinds!r}}}))\n"
)


def export_tree(rev: str, dest: Path) -> None:
    """The files of ``rev`` a testrun needs, written under ``dest`` (git archive: the
    repository is left as it was). Raises RuntimeError when git cannot give them."""
    check = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}^{{commit}}"], capture_output=True
    )
    if check.returncode != 0:
        raise RuntimeError(f"revision {rev} is not in {ROOT}'s git history")
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "bench", "bpf", "ebpflb", "tests"],
        stdout=subprocess.PIPE,
    )
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout)
    if archive.stdout is not None:
        archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise RuntimeError(f"git archive of {rev} failed")


def _run(tree: Path, script: str) -> dict[str, float]:
    """One child's figures: ns per packet by kind."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tree, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"testrun in {tree} failed:\n{out.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def compare(rev: str, rounds: int, count: int) -> dict[str, Any]:
    """Baseline and today's program, ``rounds`` each, alternating (the baseline first in
    odd rounds, second in even ones); medians per kind and their ratios."""
    fill = {"n": SCALE, "count": count, "kinds": KINDS}
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory(prefix="ebpflb-baseline-") as tmp:
        tree = Path(tmp)
        export_tree(rev, tree)
        sides = {
            "baseline": (tree, _RUN.format(module="bench.datapath", **fill)),
            "current": (ROOT, _RUN.format(module="bench.testrun", **fill)),
        }
        for i in range(rounds):
            order = ("baseline", "current") if i % 2 == 0 else ("current", "baseline")
            for side in order:
                runs[side].append(_run(*sides[side]))
    medians = {
        side: {k: statistics.median(r[k] for r in rs) for k in KINDS} for side, rs in runs.items()
    }
    ratios = {k: round(medians["current"][k] / medians["baseline"][k], 3) for k in KINDS}
    return {
        "rev": rev,
        "rounds": rounds,
        "count": count,
        "runs": runs,
        "medians": medians,
        "ratios": ratios,
    }


def table(result: dict[str, Any]) -> str:
    med, ratios = result["medians"], result["ratios"]
    lines = [
        f"{'packet':<13} {'baseline ns':>11} {'today ns':>9} {'ratio':>6} {'target':>7}  met?",
    ]
    for k in KINDS:
        target = TARGET_RATIOS.get(k)
        shown = f"{target:>7.2f}" if target is not None else f"{'-':>7}"
        met = "-" if target is None else ("yes" if ratios[k] <= target else "no")
        lines.append(
            f"{k:<13} {med['baseline'][k]:>11.0f} {med['current'][k]:>9.0f} "
            f"{ratios[k]:>6.2f} {shown}  {met}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="tc per-packet cost against issue 15's baseline")
    ap.add_argument("--rev", default=BASELINE_REV, help="the baseline's git revision")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each program, alternating")
    ap.add_argument("--count", type=int, default=5_000, help="single runs per packet kind")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("BPF_PROG_TEST_RUN needs root", file=sys.stderr)
        return 1
    try:
        result = compare(args.rev, args.rounds, args.count)
    except RuntimeError as e:
        print(f"baseline comparison not run: {e}", file=sys.stderr)
        return 2
    print(
        f"tc program ns per packet, IPv4, {SCALE} Services: today's against {args.rev}'s, "
        f"{args.rounds} alternating rounds of {args.count:,} single runs (medians)"
    )
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
