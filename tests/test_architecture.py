"""The layout's rules, checked on the project and shown to fail on small synthetic trees:
import directions, dvc.yaml deps, one source for each default, no network in the tests."""
from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from plankton_transfer.models.backbones import get_backbone, registered_names
from plankton_transfer.params.every_section import SECTIONS
from tests.conftest import ROOT
from tools.architecture import (dep_violations, find_modules, generated_deps, import_violations, params_violations,
                                stage_definitions, write_deps)


def test_the_project_keeps_its_import_rules_and_dvc_yaml_lists_every_imported_module():
    modules = find_modules(ROOT)
    assert import_violations(modules, ROOT) == []
    assert dep_violations(ROOT / "dvc.yaml", modules, ROOT) == []


def test_stages_holds_exactly_one_module_per_dvc_stage():
    """Each stage runs the module named like it; ``<stage>_ft`` runs ``<stage>``'s module for the
    fine-tuned models (evaluate_ft: the evaluate stage of each <backbone>-ft)."""
    modules = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__"}
    stages = stage_definitions(ROOT / "dvc.yaml")
    assert modules == {name.removesuffix("_ft") for name in stages}
    for name, spec in stages.items():
        assert f"python -m stages.{name.removesuffix('_ft')} " in spec["cmd"], name


def test_params_yaml_and_the_params_dataclasses_agree():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params_violations(params, SECTIONS) == []
    assert set(params) == set(SECTIONS) | {"models"}


def test_every_backbone_with_weights_has_its_folder_in_the_weights_dir():
    for name in registered_names():
        if get_backbone(name).weights is not None:
            assert (ROOT / "data" / "pretrained" / name / "README.md").is_file(), name


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


SYNTHETIC = {
    "plankton_transfer/__init__.py": '"""docstring only"""\n',
    "plankton_transfer/params.py": "X = 1\n",
    "plankton_transfer/data/__init__.py": "",
    "plankton_transfer/data/scan.py": "from plankton_transfer.models import registry\n",  # data -> models
    "plankton_transfer/models/__init__.py": "",
    "plankton_transfer/models/registry.py": "from ..params import X\n",  # relative, allowed
    "plankton_transfer/models/bad.py": "import tools.helper\n",  # library -> tools
    "plankton_transfer/cli/__init__.py": "",
    "plankton_transfer/cli/predict.py": "from stages import train\n",  # command -> stage
    "stages/__init__.py": "",
    "stages/train.py": "from plankton_transfer.models.registry import X\n",
    "stages/evaluate.py": "def f():\n    from stages.train import X\n",  # stage -> stage, hidden in a function
    "tools/__init__.py": "",
    "tools/helper.py": "import stages.evaluate\n",  # tools -> stage
    "bench/__init__.py": "",
    "tests/__init__.py": "",
}


def test_the_import_checker_catches_each_broken_rule(tmp_path):
    root = write_tree(tmp_path, SYNTHETIC)
    problems = "\n".join(import_violations(find_modules(root), root))
    assert "plankton_transfer/data/scan.py: imports plankton_transfer.models" in problems
    assert "plankton_transfer/models/bad.py: imports tools" in problems
    assert "plankton_transfer/cli/predict.py: imports stages.train" in problems
    assert "stages/evaluate.py: imports stages.train" in problems
    assert "tools/helper.py: imports stages.evaluate" in problems
    assert "stages/train.py" not in problems and "registry.py" not in problems
    assert len(problems.splitlines()) == 7  # scan.py and bad.py each reach a package and its module


def test_dvc_yaml_code_deps_are_what_the_writer_generates_from_the_import_graph(tmp_path):
    copy = tmp_path / "dvc.yaml"
    copy.write_text((ROOT / "dvc.yaml").read_text())
    assert not write_deps(copy, find_modules(ROOT), ROOT)  # writing changes nothing: they are generated
    deps = generated_deps(ROOT / "dvc.yaml", find_modules(ROOT), ROOT)
    extract = set(deps["extract"])
    # extract depends on the params sections it reads, not on the others; on no backbone's entry but its own
    assert "plankton_transfer/params/extract.py" in extract and "plankton_transfer/params/stats.py" not in extract
    assert not any(p.startswith("plankton_transfer/models/backbones/") and not p.endswith(("__init__.py", "_entries.py"))
                   for p in extract)
    assert "plankton_transfer/models/backbones/${item}.py" in stage_definitions(ROOT / "dvc.yaml")["extract"]["deps"]


def test_the_deps_checker_catches_a_missing_and_a_stale_dep(tmp_path):
    root = write_tree(tmp_path, SYNTHETIC)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"foreach": ["a"], "do": {"cmd": "python -m stages.train --model '${item}'",
                                           "deps": ["stages/train.py", "plankton_transfer/models/registry.py",
                                                    "plankton_transfer/old.py", "data/${item}"]}},
        "evaluate": {"cmd": "python -m stages.missing", "deps": []},
    }}))
    problems = dep_violations(root / "dvc.yaml", find_modules(root), root)
    assert "dvc.yaml: stage train imports plankton_transfer/params.py but does not list it in deps " \
           "(python -m tools.architecture --write)" in problems
    assert "dvc.yaml: stage train lists plankton_transfer/old.py in deps, which does not exist " \
           "(python -m tools.architecture --write)" in problems
    assert "dvc.yaml: stage evaluate runs stages.missing, which does not exist" in problems
    # an __init__.py holding only a docstring is not a dependency worth listing
    assert not any("__init__" in p for p in problems)


def test_the_params_checker_catches_drift_and_accepts_a_default_that_says_why():
    @dataclasses.dataclass(frozen=True)
    class ToyParams:
        lr: float = 0.1
        epochs: int = 5  # differs from params.yaml: the library's quick default
        gone: int = 1

    problems = params_violations({"toy": {"lr": 0.01, "epochs": 100, "extra": 3}}, {"toy": ToyParams})
    text = "\n".join(problems)
    assert "ToyParams.lr defaults to 0.1 but params.yaml says 0.01" in text
    assert "toy.gone is missing" in text and "toy.extra is read by nothing" in text
    assert "epochs" not in text
    assert params_violations({}, {"toy": ToyParams}) == ["params.yaml: no 'toy' section for ToyParams"]


def test_the_socket_guard_refuses_and_records_any_non_loopback_connection(netguard_log):
    start = netguard_log.stat().st_size
    try:
        refused = False
        with socket.socket() as sock:
            try:
                sock.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed
            except OSError as err:
                refused = "not allowed in the tests" in str(err)
        child = subprocess.run([sys.executable, "-c", "import socket; socket.getaddrinfo('example.org', 443)"],
                               capture_output=True, text=True)
        with socket.create_server(("127.0.0.1", 0)) as server:  # loopback stays open
            socket.create_connection(server.getsockname(), timeout=1).close()
        with netguard_log.open() as log:
            log.seek(start)
            attempts = log.read()
    finally:
        with netguard_log.open("r+") as log:  # these attempts were this test's own, on purpose
            log.truncate(start)
    assert refused and child.returncode != 0 and "not allowed in the tests" in child.stderr
    assert "connect to ('192.0.2.1', 9)" in attempts and "name lookup of example.org" in attempts
