"""The code's shape (issue 14): the import graph, no silent failures, no process-wide side effects."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import assert_clean_error, engramma

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engramma", "memory", "policies", "updater", "agents")  # folders; all but engramma/ map to engramma.X
# Cycles the architecture issue still lists, to be cut; any other cycle fails the test.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "engramma" else ["engramma", *parts])


def imports(path: Path) -> set[str]:
    """Every engramma module `path` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "engramma"}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "engramma"


def base_modules(edges: dict[str, set[str]]) -> set[str]:
    """The modules of engramma/ that import only each other."""
    base = {m for m in edges if package_of(m) == "engramma" and m != "engramma"}
    while shrunk := {m for m in base if not edges[m] <= base}:
        base -= shrunk
    return base


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_cli_modules_import_no_cycle():
    edges = graph()
    assert "engramma.cli" in edges and "engramma.cli_updater" in edges["engramma.cli"]
    cli = {m: {n for n in e if n.startswith("engramma.cli")} for m, e in edges.items() if m.startswith("engramma.cli")}
    assert cycles(cli) == [], "cli_updater must not import cli back: shared options live in cli_options"


def test_no_package_cycle_beyond_the_known_ones():
    """Package level (engramma/, memory/, policies/, updater/, agents/), function-level imports included. The
    base modules of engramma/ every package may use (errors, offline, types: they import nothing of the project
    but each other) are left out."""
    edges = graph()
    leaves = base_modules(edges)
    assert {"engramma.errors", "engramma.offline", "engramma.types"} <= leaves
    packages: dict[str, set[str]] = {}
    for module, targets in edges.items():
        if module in leaves or module == "engramma":  # engramma/__init__ is the public facade: it imports all
            continue
        packages.setdefault(package_of(module), set()).update(
            package_of(t) for t in targets if t not in leaves and t != "engramma" and package_of(t) != package_of(module))
    pairs = {frozenset({a, b}) for a, targets in packages.items() for b in targets if a in packages.get(b, set())}
    assert pairs - KNOWN_CYCLES == set(), f"new import cycles between packages: {pairs - KNOWN_CYCLES}"
    assert pairs <= KNOWN_CYCLES


# -- one owner per table ------------------------------------------------------------------------------------------

# Each table's rows are read and changed by its owner alone (memory/README.md); memory/store.py holds the schema.
TABLE_OWNERS = {
    "items": "memory/items.py", "events": "memory/events.py", "policies": "memory/policy_store.py",
    "meta": "memory/policy_store.py", "queue": "updater/queue.py", "jobs": "updater/queue.py",
    "adapters": "updater/registry.py", "lineage": "updater/registry.py", "retrain_requests": "updater/registry.py",
    "probe_results": "updater/measure.py", "augmentations": "updater/augment.py",
    "reservoir": "updater/consolidate.py", "reservoir_seen": "updater/consolidate.py",
}
SQL_TABLE = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO|TABLE)\s+(?:IF NOT EXISTS\s+)?([a-z_]+)\b"
                       r"|\binsert\(con, \"([a-z_]+)\"")  # memory/store.insert: a bulk Arrow insert


def test_sql_on_each_table_is_in_its_owner_alone():
    found = {}
    for folder in (*PACKAGES, "examples", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            named = {t for pair in SQL_TABLE.findall(path.read_text()) for t in pair if t}
            for table in named & set(TABLE_OWNERS):
                if rel not in (TABLE_OWNERS[table], "memory/store.py"):
                    found.setdefault(table, []).append(rel)
    assert found == {}, f"SQL outside the table's owner: {found}"
    assert [t for pair in SQL_TABLE.findall('SELECT id FROM items i JOIN queue q; insert(con, "jobs", rows)')
            for t in pair if t] == ["items", "queue", "jobs"], "the scan sees SQL"


def test_the_storage_api_is_written_down_whole():
    """memory/README.md names every public function of a table owner that takes a connection: the API a second
    backend implements."""
    readme = (ROOT / "memory" / "README.md").read_text()
    missing = []
    for owner in sorted(set(TABLE_OWNERS.values()) - {"updater/consolidate.py"}):
        tree = ast.parse((ROOT / owner).read_text())
        assert f"`{owner}`" in readme, owner
        missing += [f"{owner}: {n.name}" for n in tree.body
                    if isinstance(n, ast.FunctionDef) and not n.name.startswith("_") and n.args.args
                    and n.args.args[0].arg == "con" and f"`{n.name}`" not in readme]
    assert missing == []


# -- no silent failures ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ['{"global": {"version": "v1", "pa', '["v1"]'])
def test_a_damaged_active_pointer_is_an_error_that_names_the_file_and_the_fix(tmp_path, embedder, damage):
    from engramma import Memory
    from engramma.updater.registry import AdapterError, read_active_pointer

    store = tmp_path / "store"
    Memory.open(store, embedder=embedder).close()
    assert read_active_pointer(store) == {}, "no promotion yet: no pointer, no adapter"
    pointer = store / "adapters" / "active.json"
    pointer.parent.mkdir(exist_ok=True)
    pointer.write_text(damage)
    with pytest.raises(AdapterError, match=r"active\.json.*engramma adapters sync"):
        read_active_pointer(store)

    synced = engramma("adapters", "sync", store)
    assert synced.returncode == 0, synced.stderr
    assert "no adapter is active" in synced.stdout
    assert read_active_pointer(store) == {} and json.loads(pointer.read_text()) == {"schema": 1, "active": {}}
    pointer.write_text('{"schema": 99, "active": {}}')
    with pytest.raises(AdapterError, match=r"schema 99.*engramma adapters sync"):
        read_active_pointer(store)
    pointer.write_text('{"global": {"version": "v1", "path": "adapters/v1"}}')  # written before the schema
    assert read_active_pointer(store) == {"global": {"version": "v1", "path": "adapters/v1"}}
    assert_clean_error(engramma("adapters", "sync", tmp_path / "nowhere"), "no engramma store")


# -- no process-wide side effects --------------------------------------------------------------------------------


def test_loading_models_leaves_the_environment_and_progress_bars_as_they_were(tiny_model_path):
    """Loading the embedder and a language model sets no HF_HUB_OFFLINE and leaves transformers' progress bars
    on, yet reaches for no network: every load is local_files_only."""
    source = f"""
import os
from transformers.utils import logging
from engramma.memory.embed import SentenceEmbedder
from engramma.updater import load_model
SentenceEmbedder().embed(["warm up"])
load_model({str(tiny_model_path)!r}, device="cpu")
print(os.environ.get("HF_HUB_OFFLINE"), logging.is_progress_bar_enabled())
"""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["None", "True"], done.stdout


def test_writing_the_report_changes_no_matplotlib_setting(tmp_path, embedder):
    import matplotlib

    from engramma import Item, Memory
    from engramma.updater.report import write_report

    with Memory.open(tmp_path / "store", embedder=embedder) as mem:
        mem.observe(Item(text="Refunds are accepted within 30 days.", kind="fact"))
        before, backend = dict(matplotlib.rcParams), matplotlib.get_backend()
        page = write_report(mem.store, tmp_path / "report")
    assert page.is_file() and list((tmp_path / "report").glob("*.png"))
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == before


# -- typed artefacts ---------------------------------------------------------------------------------------------


def test_the_report_has_a_look_for_every_check_the_gate_makes():
    from engramma.updater.gate import CheckName, judge
    from engramma.updater.measure import EvalMetrics
    from engramma.updater.report import CHECK_LOOKS
    from engramma.policies import load_policy

    assert set(CHECK_LOOKS) == set(CheckName)
    # And judge names only those: every check it can make, on metrics that switch each one on.
    metrics = {"new_items": 3, "new_probed": 3, "new_accuracy": 1.0, "parent_new_accuracy": 0.0,
               "base_new_accuracy": 0.0, "new_heldout": 3, "new_heldout_accuracy": 1.0,
               "base_new_heldout_accuracy": 0.0, "new_unprobed": 1, "new_logprob": -1.0, "parent_new_logprob": -2.0,
               "earlier_probed": 2, "parent_retention": 1.0, "retention": 1.0, "earlier_heldout": 2,
               "parent_retention_heldout": 1.0, "retention_heldout": 1.0, "earlier_unprobed": 2,
               "retention_logprob": -1.0, "parent_retention_logprob": -1.0, "perplexity": 10.0,
               "parent_perplexity": 10.0, "general_prompts": 4, "general_agreement": 1.0}
    made = judge(EvalMetrics.from_dict(metrics), load_policy("preset:default").spec.gate, tainted=True)
    assert {c.name for c in made} <= set(CheckName) and {c.name for c in made} == set(CheckName)
    assert {str(c.name) for c in made} >= {"items", "untainted"}, "names print as their plain strings"


# -- size -------------------------------------------------------------------------------------------------------

MAX_LINES, MAX_METHODS = 600, 20


def test_no_module_is_too_long_and_no_class_has_too_many_methods():
    """A newcomer can read any module at a sitting and hold any class's surface in mind."""
    long, wide = [], []
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            source = path.read_text()
            if source.count("\n") > MAX_LINES:
                long.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ClassDef):
                    methods = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
                    if methods > MAX_METHODS:
                        wide.append(f"{path.relative_to(ROOT)}: {node.name} has {methods} methods")
    assert long == [] and wide == [], long + wide
