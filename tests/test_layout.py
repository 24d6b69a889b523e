"""The dependency direction: coordinator/ and participant/ build on zk0/, never on each other, and zk0/
imports neither, except zk0/simulate.py, which runs both in one process (zk0 compare reaches them through
it; zk0/cli.py only parses and calls). Read from the source, so it cannot drift."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# The one module of zk0/ that may import coordinator/ and participant/: it wires them together.
ORCHESTRATORS = {ROOT / "zk0" / "simulate.py"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


PROTOCOL = {"grpc", "zk0.v1", "zk0.transport", "coordinator", "participant"}


def imported_modules(path: Path) -> set[str]:
    """Every dotted prefix of every absolute import (`from zk0.v1 import x` -> zk0, zk0.v1, zk0.v1.x)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("zk0", {"coordinator", "participant"}),
        ("coordinator", {"participant"}),
        ("participant", {"coordinator"}),
    ],
)
def test_imports_run_one_way(package, forbidden):
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(imported_packages(path) & forbidden)}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if path not in ORCHESTRATORS and imported_packages(path) & forbidden
    ]
    assert not offenders


def test_only_the_orchestrator_imports_both_sides():
    both = {"coordinator", "participant"}
    assert {p for p in (ROOT / "zk0").rglob("*.py") if imported_packages(p) & both} == ORCHESTRATORS
    assert imported_packages(ROOT / "zk0" / "simulate.py") >= both


def test_the_trainer_library_knows_no_protocol():
    """zk0/training/ trains and evaluates a policy; the wire (gRPC, the generated stubs) is the callers'."""
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(imported_modules(path) & PROTOCOL)}"
        for path in sorted((ROOT / "zk0" / "training").rglob("*.py"))
        if imported_modules(path) & PROTOCOL
    ]
    assert not offenders


def test_the_round_record_is_plain_python():
    """zk0/records.py is read by the reports (no torch, no gRPC) and by every side: stdlib and zk0 only."""
    allowed = {"__future__", "collections", "dataclasses", "typing", "zk0"}
    assert imported_packages(ROOT / "zk0" / "records.py") <= allowed


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([str(ruff), *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_only_zk0_hub_imports_huggingface_hub():
    """Every hub call goes through zk0/hub.py, so an unreachable or refusing hub reads the same everywhere."""
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("zk0", "coordinator", "participant")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "zk0" / "hub.py" and "huggingface_hub" in imported_packages(path)
    ]
    assert not offenders


def zk0_closure(module: str) -> set[str]:
    """Every zk0 module that importing `module` loads, through zk0's own imports."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = ROOT / (name.replace(".", "/") + ".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        todo.extend(m for m in imported_modules(path) if m.startswith("zk0."))
    return seen


def test_the_policy_builder_does_not_load_the_demo_data_generator():
    """model.source = "tiny" needs the tiny VLM's assets (zk0/tiny_vlm.py), not the synthetic datasets."""
    assert "zk0.tiny_vlm" in zk0_closure("zk0.policy")
    assert "zk0.demo" not in zk0_closure("zk0.policy")
