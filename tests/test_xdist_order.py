"""The order the two xdist workers get their work in (tests/xdist_order.py)."""

import types

from tests.xdist_order import two_workers_start_apart


def _item(nodeid: str, *fixtures: str):
    return types.SimpleNamespace(nodeid=nodeid, fixturenames=["request", *fixtures])


def _names(items) -> list[str]:
    return [i.nodeid for i in items]


def test_largest_groups_first_and_the_second_needs_no_tiny_dataset():
    items = [
        _item("t/a.py::one"),
        _item("t/b.py::x@big", "tiny_dataset"),
        _item("t/b.py::y@big", "tiny_dataset"),
        _item("t/b.py::z@big", "tiny_dataset"),
        _item("t/c.py::x@next", "trained_policies", "tiny_dataset"),
        _item("t/c.py::y@next", "tiny_dataset"),
        _item("t/a.py::two"),
        _item("t/d.py::x@own", "built"),
        _item("t/d.py::y@own", "built"),
        _item("t/e.py::x@small"),
    ]
    assert _names(two_workers_start_apart(items)) == [
        "t/b.py::x@big", "t/b.py::y@big", "t/b.py::z@big",
        # `own` (2 tests) goes before `next` (2 tests) although it needs its own build:
        # only `tiny_dataset` is built once for both workers, so the second waits for it.
        "t/d.py::x@own", "t/d.py::y@own",
        "t/c.py::x@next", "t/c.py::y@next",
        "t/e.py::x@small",
        "t/a.py::one", "t/a.py::two",  # single tests last, in collection order
    ]


def test_without_a_dataset_free_group_the_order_is_by_size():
    items = [_item("t/a.py::x@a", "tiny_dataset"), _item("t/b.py::x@b", "tiny_dataset"),
             _item("t/b.py::y@b", "tiny_dataset"), _item("t/c.py::single")]
    assert _names(two_workers_start_apart(items)) == [
        "t/b.py::x@b", "t/b.py::y@b", "t/a.py::x@a", "t/c.py::single"]
    assert two_workers_start_apart([]) == []
