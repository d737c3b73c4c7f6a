"""The order the suite's tests are sent to its two xdist workers in (tests/conftest.py)."""


def two_workers_start_apart(items: list) -> list:
    """The order xdist sends work in (pyproject runs it with --no-loadscope-reorder): groups
    largest first, as xdist's own reorder does, then single tests in collection order; but
    the second group is the largest one that does not need `tiny_dataset`.

    Both workers start at once, and every one of the largest groups needs `tiny_dataset`, so
    the second worker used to wait for the first one's build of it (~15 s of one core idle)."""
    groups: dict[str, list] = {}
    singles = []
    for item in items:
        if "@" in item.nodeid:
            groups.setdefault(item.nodeid.rsplit("@", 1)[1], []).append(item)
        else:
            singles.append(item)
    order = sorted(groups.values(), key=len, reverse=True)
    apart = next((i for i, g in enumerate(order)
                  if i > 0 and not any("tiny_dataset" in t.fixturenames for t in g)), None)
    if apart is not None:
        order.insert(1, order.pop(apart))
    return [t for g in order for t in g] + singles
