"""Success rates with Wilson score intervals, per task, per group and overall.

Wilson's interval stays inside [0, 1] and is honest at 0/10 and 10/10, where the normal
approximation collapses to a zero-width interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z=1.96); (0, 1) when n=0."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(outcomes: Iterable[bool]) -> dict[str, Any]:
    """{success, successes, n, ci95} of a list of episode outcomes."""
    outcomes = [bool(o) for o in outcomes]
    k, n = sum(outcomes), len(outcomes)
    lo, hi = wilson_interval(k, n)
    return {"success": k / n if n else float("nan"), "successes": k, "n": n, "ci95": [lo, hi]}


def summarise(episodes: Sequence[Mapping[str, Any]],
              groups: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Per task, per group and overall success of episode records ({task, success, ...}).

    A crashed episode (its record has an `error`) counts as a failure: the policy did not
    finish the task.
    """
    by_task: dict[str, list[bool]] = {}
    for ep in episodes:
        by_task.setdefault(ep["task"], []).append(bool(ep["success"]))
    tasks = {task: rate(by_task[task]) for ts in groups.values() for task in ts
             if task in by_task}
    group_rates = {g: rate([o for t in ts for o in by_task.get(t, [])])
                   for g, ts in groups.items() if any(t in by_task for t in ts)}
    return {"overall": rate([o for os_ in by_task.values() for o in os_]),
            "groups": group_rates, "tasks": tasks,
            "errors": sum(1 for ep in episodes if ep.get("error"))}


def format_rate(r: Mapping[str, Any]) -> str:
    """'70% [40–89] (7/10)' for a rate record."""
    lo, hi = r["ci95"]
    return f"{r['success']:.0%} [{lo:.0%}–{hi:.0%}] ({r['successes']}/{r['n']})"
