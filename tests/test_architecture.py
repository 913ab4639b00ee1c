"""The import contract: the layers the folders show, checked on the source (no imports run).

- The engine (``drizzle_ml/*.py``, ``drizzle_ml/streams/``) never imports an algorithm, the command
  line or the dataset tools, not even inside a function; only the package's
  public face (``__init__``: lazy estimator names) and ``__main__`` (the CLI
  entry) may.
- Program modules, which workers unpickle, import neither MPI nor
  scikit-learn at module level (a worker then starts faster).
- No import cycles between modules at module level; in the command line
  (``launch/``) none even through imports inside functions.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"drizzle_ml": "drizzle_ml", "drizzle_ml.streams": "drizzle_ml/streams",
            "drizzle_ml.algorithms": "algorithms", "drizzle_ml.launch": "launch", "drizzle_ml.datasets": "datasets"}
PROGRAM_MODULES = ("pca_programs", "kmeans_programs", "normal_equations", "optim", "online", "moments", "losses")


def _modules() -> dict[str, str]:
    out = {}
    for package, folder in PACKAGES.items():
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                out[package if name == "__init__.py" else f"{package}.{name[:-3]}"] = os.path.join(ROOT, folder, name)
    return out


MODULES = _modules()


def imported(module: str, *, top_level_only: bool) -> set[str]:
    """The modules (and names) ``module`` imports, absolute; relative imports resolved."""
    path = MODULES[module]
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # "from . import protocol" imports the module drizzle_ml.protocol
                name = f"{base}.{alias.name}"
                found.add(name if name in MODULES else base)
    return found


def inside(name: str, *packages: str) -> bool:
    """Whether module ``name`` is one of ``packages`` or inside one (``drizzle_ml.worker_job`` is not)."""
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_engine_imports_no_algorithm_command_line_or_dataset_tool():
    above = ("drizzle_ml.algorithms", "drizzle_ml.launch", "drizzle_ml.datasets")
    offenders = {}
    for module in MODULES:
        if module not in ("drizzle_ml", "drizzle_ml.__main__") and not inside(module, *above):
            bad = sorted(i for i in imported(module, top_level_only=False) if inside(i, *above))
            if bad:
                offenders[module] = bad
    assert offenders == {}


@pytest.mark.parametrize("name", PROGRAM_MODULES)
def test_program_modules_import_neither_mpi_nor_scikit_learn(name):
    module = f"drizzle_ml.algorithms.{name}"
    heavy = sorted(i for i in imported(module, top_level_only=False) if i.split(".")[0] in ("mpi4py", "sklearn"))
    assert heavy == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_at_module_level():
    graph = {m: {i for i in imported(m, top_level_only=True) if i in MODULES and i != m} for m in MODULES}
    assert _cycles(graph) == []


def test_no_import_cycles_in_the_command_line_even_inside_functions():
    launch = [m for m in MODULES if inside(m, "drizzle_ml.launch")]
    graph = {m: {i for i in imported(m, top_level_only=False) if i in launch and i != m} for m in launch}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
