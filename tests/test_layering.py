"""The packages' layering: imports run only downward (launcher -> jobs -> trainer), with no circles,
and the laptop's CLI loads no torch. Read from the source with `ast`, lazy imports included."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "jobs", "launcher")  # lowest first: each may import only those before it


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (function-level and TYPE_CHECKING imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from trainer import checkpoint` imports the module trainer.checkpoint
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {name: project_imports(path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a module importing itself)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports_it_checks():
    graph = import_graph()
    # One import of each kind the walk must see: top level, `from pkg import module`, inside a function.
    assert "launcher.context" in graph["launcher.cli"]
    assert "trainer.checkpoint_files" in graph["launcher.resume"]
    assert "launcher.watch" in graph["launcher.cli"]


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_run_only_downward():
    upward = [f"{m} imports {d}" for m, deps in import_graph().items() for d in deps
              if PACKAGES.index(d.split(".")[0]) > PACKAGES.index(m.split(".")[0])]
    assert upward == []


def test_the_laptop_cli_loads_no_torch():
    code = "import sys, launcher.cli, launcher.watch; print(sorted(m for m in ('torch', 'accelerate') if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_a_prepare_worker_loads_neither_datasets_nor_datasketch():
    """Each of prepare's worker processes imports jobs.prepare.work at its start: datasets, datasketch
    (and the scipy it pulls in) would cost every worker half a second before its first batch."""
    code = ("import sys, jobs.prepare.work; "
            "print(sorted(m for m in ('datasets', 'datasketch', 'scipy', 'torch') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


HEAVY = ("torch", "accelerate", "safetensors", "transformers", "datasets")


def heavy_imports(module: str) -> set[str]:
    path = REPO / (module.replace(".", "/") + ".py")
    path = path if path.is_file() else REPO / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(HEAVY)


def test_nothing_the_launcher_reaches_imports_torch_even_lazily():
    """`pull`, `up --resume` and the rest run on a laptop: no path through the launcher's modules, a
    function-level import included, reaches a module that imports torch (or accelerate, datasets ...)."""
    graph = import_graph()
    reached, todo = set(), [m for m in graph if m.startswith("launcher")]
    while todo:
        if (m := todo.pop()) not in reached:
            reached.add(m)
            todo += graph[m]
    assert "jobs.report" in reached and "trainer.checkpoint_files" in reached  # pull and resume are walked
    assert {m: sorted(heavy_imports(m)) for m in sorted(reached) if heavy_imports(m)} == {}
