"""The import graph of components/, zoo/ and the app: no circles, no import upward, the ground floor on the
standard library, pipelines that know no file format, a library that never loads gradio, and
ARCHITECTURE.md's worked examples run as written.

Every `import` statement counts, at module level and inside functions (a late import hides a circle, it does
not break it); only `if TYPE_CHECKING:` blocks, which never run, are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("components", "zoo", "app")  # and app.py; `app` is the app's package once it has one

# The floors, lowest first (ARCHITECTURE.md): a module may import its own floor and the ones below it.
# Longest matching prefix wins; any other zoo module counts as the top library floor.
FLOORS = {
    "components.registry": 0,
    "components.validation": 0,
    "components": 1,
    "zoo.registry": 2,
    "zoo.recipes": 2,
    "zoo.data": 2,
    "zoo.catalog": 2,
    "zoo.diffusers_layout": 3,
    "zoo.pipeline_io": 3,
    "zoo.shared_parts": 3,
    "zoo.pipelines": 4,
    "zoo.assembly": 5,
    "zoo.build": 5,
    "zoo": 5,  # the package itself: zoo/__init__.py is the public API (build, available, recipe)
    "zoo.train": 6,
    "zoo.evaluate": 6,
    "zoo.bench": 6,
    "zoo.app": 7,
    "app": 7,
}
TOP_LIBRARY_FLOOR = 6
APP_FLOOR = 7
# What a module may never import, even below it: pipelines hand saving to zoo.pipeline_io.
FORBIDDEN = {"zoo.pipelines": ("zoo.diffusers_layout", "safetensors")}


def module_files() -> dict[str, Path]:
    files = {"app": ROOT / "app.py"} if (ROOT / "app.py").is_file() else {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []:
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files.setdefault(name, path)
    return files


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Every module named by an import statement anywhere in `tree` (outside TYPE_CHECKING blocks):
    `from zoo import catalog` names zoo.catalog, a submodule; `from zoo import build` names zoo itself."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(base)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between project modules, every imported top-level name) per project module."""
    files = module_files()
    edges, external = {}, {}
    for name, path in files.items():
        names = imported_names(ast.parse(path.read_text()), name, path.name == "__init__.py", set(files))
        edges[name] = {n for n in names if n in files and n != name}
        external[name] = {n.split(".")[0] for n in names if n.split(".")[0] not in PACKAGES}
    return edges, external


def floor(module: str) -> int:
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    best = max(prefixes, key=len) if prefixes else None
    if best in (None, "zoo") and module != "zoo":
        return TOP_LIBRARY_FLOOR
    return FLOORS[best]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules around it, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


EDGES, EXTERNAL = import_graph()


def test_the_graph_sees_function_level_imports():
    """The walker must see late imports, or a circle hidden in a function would pass."""
    assert "zoo.diffusers_layout" in EDGES["zoo.pipeline_io"]  # imported inside read() and save()
    assert "zoo.catalog" in EDGES["zoo.build"] and len(EDGES) > 40


def test_no_import_circle():
    cycle = find_cycle(EDGES)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_imports_a_floor_above_its_own():
    upward = [
        f"{source} (floor {floor(source)}) imports {target} (floor {floor(target)})"
        for source, targets in EDGES.items()
        for target in targets
        if floor(target) > floor(source)
    ]
    assert not upward, "\n".join(upward)


def test_the_ground_floor_uses_the_standard_library_only():
    for module in ("components.registry", "components.validation"):
        assert EDGES[module] == set(), module
        assert EXTERNAL[module] <= set(sys.stdlib_module_names) | {"__future__"}, (module, EXTERNAL[module])


def test_pipelines_know_no_file_format_and_the_library_never_imports_gradio():
    for source in EDGES:
        for prefix, banned in FORBIDDEN.items():
            if source.startswith(prefix):
                imported = EDGES[source] | EXTERNAL[source]
                assert not imported & set(banned), (source, imported & set(banned))
        if floor(source) < APP_FLOOR:
            assert "gradio" not in EXTERNAL[source], f"{source} imports gradio: only the app may"


def test_components_import_nothing_from_the_zoo():
    assert not [(s, t) for s, targets in EDGES.items() if s.startswith("components") for t in targets if floor(t) > 1]


@pytest.mark.parametrize(
    "code",
    [
        "import components.schedulers.cosine, sys; assert 'zoo.build' not in sys.modules, 'components loaded zoo'",
        "import components.samplers.ddim, sys; assert not [m for m in sys.modules if m.startswith('zoo')]",
        "import zoo, sys; assert 'gradio' not in sys.modules and 'transformers' not in sys.modules",
    ],
)
def test_imports_stay_cheap(code):
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def architecture_examples() -> list[tuple[str, str]]:
    """The ```python blocks of ARCHITECTURE.md that follow a `<!-- example: NAME -->` line."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    examples = []
    for chunk in text.split("<!-- example: ")[1:]:
        name, rest = chunk.split(" -->", 1)
        examples.append((name.strip(), rest.split("```python\n", 1)[1].split("```", 1)[0]))
    return examples


def test_architecture_md_has_a_worked_example_for_each_kind_of_part():
    names = [name for name, _ in architecture_examples()]
    assert names == ["schedule", "sampler", "unet", "autoencoder", "conditioner", "pipeline"]


def test_architecture_md_examples_run_as_written():
    """All six in one fresh interpreter (they register names, which must not leak into this process), each in
    its own namespace, so an example that leans on another's imports fails."""
    runner = "\n".join(
        [
            "import sys, torch, traceback",
            "torch.set_num_threads(1)",
            f"examples = {architecture_examples()!r}",
            "for name, code in examples:",
            "    try:",
            "        exec(compile(code, f'ARCHITECTURE.md example {name}', 'exec'), {'__name__': f'example_{name}'})",
            "    except Exception:",
            "        print(f'example {name!r} failed', file=sys.stderr); traceback.print_exc(); sys.exit(1)",
        ]
    )
    result = subprocess.run([sys.executable, "-c", runner], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
