"""The house's floors: no import cycle between library modules (function-level imports count),
and the data layer imports nothing above it (no simulator, model, training or evaluation)."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the data layer may import besides itself: the parameter-name and command-line helpers.
DATA_MAY_IMPORT = ("wallwm_jax.data", "wallwm_jax.tree_names", "wallwm_jax.cli")


def _modules() -> dict[str, str]:
    """{dotted module name: path} of every wallwm_jax module (packages by their own name)."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(REPO, "wallwm_jax")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def _is_main_block(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` at the top level of a file."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__"
                    for c in test.comparators))


def import_graph() -> dict[str, set[str]]:
    """Module -> the wallwm_jax modules it imports anywhere in its source. `from pkg import
    submodule` is an edge to the submodule, not to the package's __init__. Imports under
    `if __name__ == "__main__":` are not the module's: that block runs only in the script
    `python -m` makes of the file (the module `__main__`), never when it is imported."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        tree.body = [n for n in tree.body if not _is_main_block(n)]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in modules]
                if len(targets) < len(subs):  # some names come from the module itself
                    targets.append(node.module)
            graph[module].update(t for t in targets if t in modules and t != module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", ["wallwm_jax.data"])
def test_the_data_layer_imports_nothing_above_it(layer):
    graph = import_graph()
    upward = {m: sorted(d for d in deps if not d.startswith(DATA_MAY_IMPORT))
              for m, deps in graph.items() if m == layer or m.startswith(layer + ".")}
    assert {m: d for m, d in upward.items() if d} == {}
