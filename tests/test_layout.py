"""The house: entry points at the root, one package below them, no import circle, no sys.path inserts, one flag
style (underscores)."""
import ast
import os
import re
import subprocess

from conftest import ROOT

ENTRY_POINTS = {"capture_data.py", "mha_modular.py", "ffn_modular.py", "run_superglue.py", "consolidate.py",
                "closed_form.py", "export.py", "run_speed.py"}
MODEL_FILE = "modeling_moddistilbert.py"


def tracked(pattern):
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True).stdout.split()
    return [p for p in out if os.path.exists(os.path.join(ROOT, p))]


def test_the_root_holds_only_entry_points_and_the_model_file():
    root_py = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    assert root_py == ENTRY_POINTS | {MODEL_FILE}, root_py ^ (ENTRY_POINTS | {MODEL_FILE})
    for name in ENTRY_POINTS:   # thin: a docstring, the imports, main
        tree = ast.parse(open(os.path.join(ROOT, name)).read())
        defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert set(defs) <= {"main"}, (name, defs)
        assert all(isinstance(n, (ast.Expr, ast.Import, ast.ImportFrom, ast.If, ast.FunctionDef)) for n in tree.body)


def test_the_model_file_is_self_contained():
    tree = ast.parse(open(os.path.join(ROOT, MODEL_FILE)).read())
    mods = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    mods |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "modcomp" not in mods and "modeling_moddistilbert" not in mods, mods   # saved beside every model


def package_imports():
    """{module: {modcomp modules it imports at module level}}."""
    graph = {}
    for f in os.listdir(os.path.join(ROOT, "modcomp")):
        if not f.endswith(".py"):
            continue
        name = f[:-3]
        tree = ast.parse(open(os.path.join(ROOT, "modcomp", f)).read())
        deps = set()
        for n in tree.body:   # module level: what runs at import
            if isinstance(n, ast.ImportFrom) and n.module == "modcomp":
                deps |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("modcomp."):
                deps.add(n.module.split(".")[1])
        graph[name] = deps - {name}
    return graph


def test_no_import_circle_in_the_package():
    graph = package_imports()
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", " -> ".join(path + [m])
        state[m] = "open"
        for d in graph.get(m, ()):
            visit(d, path + [m])
        state[m] = "done"
    for m in graph:
        visit(m, [])
    # the torch-free layers stay torch-free: the workflow and the table import no torch module of the package
    torch_free = {"config", "utils", "workflow", "workflow_cli", "report", "task_registry"}
    for m in torch_free:
        src = open(os.path.join(ROOT, "modcomp", f"{m}.py")).read()
        assert not re.search(r"^(import torch|from torch)", src, re.M), m
        assert graph[m] <= torch_free, (m, graph[m] - torch_free)
    # the tasks are declared once: the stages (tasks.py), the workflow (config.py) and the table (report.py)
    # read task_registry.py
    assert {"tasks", "config", "report"} <= {m for m, d in graph.items() if "task_registry" in d}


def test_no_sys_path_inserts_and_one_flag_style():
    for path in tracked("*.py"):
        src = open(os.path.join(ROOT, path)).read()
        assert not re.search(r"sys\.path\.(insert|append)\(", src), path
        flags = re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", src)
        assert not [f for f in flags if "-" in f[2:]], (path, [f for f in flags if "-" in f[2:]])
