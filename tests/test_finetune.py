"""Fine-tuning (finetune@<backbone>, docs/finetuning.md) and test-time augmentation: bad settings
are one line before any compute; augmentation touches the training images only; a run killed
after an epoch resumes to the uninterrupted result; a fine-tuned model file works with
plankton-predict and plankton-export (ONNX within 1e-4); TTA averages the 8 dihedral views of
the validation and test images only. The end-to-end `dvc exp run` is tests/test_finetune_pipeline.py."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from plankton_transfer.cli import export, predict
from plankton_transfer.data.augment import Augment, sample_generator
from plankton_transfer.data.features import load_split
from plankton_transfer.data.images import load_rgb
from plankton_transfer.data.preprocess import border_colour, draft_size, make_transform
from plankton_transfer.data.split_files import read_splits
from plankton_transfer.data.tta import dihedral_views, mean_of_views
from plankton_transfer.errors import UserError
from plankton_transfer.models import finetuning
from plankton_transfer.models.backbones import get_backbone, registered_names
from plankton_transfer.models.checkpoints import CHECKPOINT, FINISHED
from plankton_transfer.models.extraction import run_extraction
from plankton_transfer.models.feature_net import FeatureExtractor, build_backbone, build_feature_network
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.provenance import InputRecipe, load_meta
from plankton_transfer.models.weights import RANDOM_INIT, ResolvedWeights, resolve_weights
from plankton_transfer.params.augment import AugmentParams
from plankton_transfer.params.core import read_params, section
from plankton_transfer.params.extract import ExtractParams
from plankton_transfer.params.finetune import FinetuneParams
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.settings import RunSettings
from stages import filter as filter_stage
from stages import finetune as finetune_stage
from tests.conftest import filter_and_split, make_dataset, write_params
from tests.field_data import lite0_model

LITE0 = "efficientnet_lite0"
CPU = RunSettings(device="cpu", workers=0)
TINY = {"finetune": {"models": [LITE0], "max_epochs": 2, "batch_size": 4}, "filter": {"min_images_per_class": 3}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Three classes of 4 small images (8 train, 2 val, 2 test), filtered and split; its params file."""
    root = tmp_path_factory.mktemp("finetune")
    make_dataset(root / "raw", {"a": 4, "b": 4, "c": 4}, seed=5)
    params = write_params(root / "params.yaml", data={"raw": str(root / "raw")}, **TINY)
    filter_and_split(root, root / "raw", params)
    return root


def setup(root: Path, **settings):
    """What the stage hands finetuning.finetune: plan, images, settings."""
    params = read_params(root / "params.yaml")
    cfg = dataclasses.replace(section(FinetuneParams, params, "finetune"), **settings)
    plan = finetuning.plan_finetuning(LITE0, cfg, PretrainedParams())
    images = finetuning.Images(root / "raw", read_splits(root / "split"),
                               InputRecipe(mode="pad", preprocess=plan.backbone.preprocess))
    return plan, images, cfg, section(AugmentParams, params, "augment")


def plain_images(images: finetuning.Images, split: str) -> list[torch.Tensor]:
    """``split``'s images exactly as extract preprocesses them (make_transform, nothing else)."""
    pre = images.recipe
    transform = make_transform(pre.preprocess, pre.mode, pre.image)
    return [transform(load_rgb(images.raw / p, pre.image, draft_size(pre.preprocess, pre.mode)))
            for p in images.parts[split]["path"]]


def stage_args(root: Path, params: Path | None = None) -> list[str]:
    return ["--model", LITE0, "--split-dir", str(root / "split"), "--model-file",
            str(root / "models" / f"{LITE0}-ft.pt"), "--features", str(root / "features"),
            "--checkpoints", str(root / "checkpoints"), "--live-dir", str(root / "live"),
            "--params", str(params or root / "params.yaml")]


@pytest.fixture(scope="module")
def stage_run(project):
    """The finetune stage on the tiny project: the model file, features, curves and checkpoint folder."""
    model = finetune_stage.main(stage_args(project))
    return project, model


# ---- settings ----

@pytest.mark.parametrize("settings, message", [
    ({"unfreeze": "blocks.9"}, "finetune.unfreeze is 'blocks.9', which is not a block of efficientnet_lite0; use "
                               "head, all, a number of last blocks (1-9) or a block: stem, blocks.0"),
    ({"max_epochs": -1}, "finetune.max_epochs is -1; it must be >= 1"),
    ({"unfreeze": 10}, "finetune.unfreeze is 10, but efficientnet_lite0 has 9 blocks (stem, blocks.0, "),
    ({"unfreeze": 0}, "finetune.unfreeze is 0; use head, all, a number of last blocks >= 1 or a block's name"),
    ({"models": ["resnet_nope"]}, "finetune.models: unknown backbone(s) 'resnet_nope'"),
    ({"class_weights": "inverse"}, "finetune.class_weights is 'inverse'; choose one of none, inverse_quarter"),
])
def test_a_bad_setting_is_one_line_from_the_first_stage_and_from_finetune_before_any_compute(
        tmp_path, monkeypatch, settings, message):
    params = write_params(tmp_path / "params.yaml", data={"raw": str(tmp_path / "raw")},
                          finetune={**TINY["finetune"], **settings})

    def no_compute(*args, **kwargs):
        raise AssertionError("compute started")

    monkeypatch.setattr(finetuning, "build_network", no_compute)
    for name in ("finetune", "run_extraction"):
        monkeypatch.setattr(finetune_stage, name, no_compute)
    with pytest.raises(UserError) as stopped:
        finetune_stage.main(stage_args(tmp_path, params))
    assert message in str(stopped.value) and "\n" not in str(stopped.value)
    (tmp_path / "raw").mkdir()
    with pytest.raises(UserError) as first:  # a run's first stage checks every section: nothing runs at all
        filter_stage.main(["--raw", str(tmp_path / "raw"), "--manifest", str(tmp_path / "m.csv"), "--report",
                           str(tmp_path / "r.json"), "--cache-file", str(tmp_path / "c.csv"), "--params", str(params)])
    assert str(first.value) == str(stopped.value)
    assert not (tmp_path / "m.csv").exists()


def test_augment_settings_out_of_range_are_one_line(tmp_path):
    params = write_params(tmp_path / "params.yaml", augment={"scale": [1.2, 0.8]})
    with pytest.raises(UserError, match=r"augment.scale is \[1.2, 0.8\]; give \[low, high\] with low <= high"):
        read_params(params)


def test_every_backbone_names_blocks_that_hold_every_parameter_in_order():
    for name in registered_names():
        backbone = get_backbone(name)
        model = build_backbone(name, ResolvedWeights(source=RANDOM_INIT))
        in_blocks = [id(p) for _, paths in backbone.blocks for path in paths
                     for p in model.get_submodule(path).parameters()]
        assert sorted(in_blocks) == sorted(id(p) for p in model.parameters()), name
        assert backbone.trainable_blocks(2) == backbone.block_names[-2:]
        assert backbone.trainable_blocks(backbone.block_names[-3]) == backbone.block_names[-3:]
        assert backbone.trainable_blocks("head") == () and backbone.trainable_blocks("all") == backbone.block_names


def test_learning_rate_schedules_and_class_weights():
    cfg = FinetuneParams(max_epochs=4)
    assert [finetuning.lr_factor(e, cfg) for e in (1, 3)] == [1.0, pytest.approx(0.5)]
    step = dataclasses.replace(cfg, schedule="step")
    assert [finetuning.lr_factor(e, step) for e in (1, 2, 3, 4)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.01)]
    labels = torch.tensor([0] * 16 + [1] * 1 + [2] * 4)
    weights = finetuning.class_weights(labels, 3, "inverse_quarter")
    assert weights.tolist() == pytest.approx([1.0, 16 ** 0.25, 4 ** 0.25])
    assert finetuning.class_weights(labels, 3, "none") is None


# ---- augmentation ----

def test_augment_is_seeded_per_image_keeps_grey_grey_and_fills_with_the_border_colour():
    image = torch.full((3, 64, 64), 210, dtype=torch.uint8)
    image[:, 28:36, 8:56] = 40  # a long dark organism on a light background
    augment = Augment(AugmentParams())
    first = augment(image, sample_generator(7, 1, 3))
    assert torch.equal(first, augment(image, sample_generator(7, 1, 3)))
    assert not torch.equal(first, augment(image, sample_generator(7, 2, 3)))  # another epoch, another draw
    outputs = [augment(image, sample_generator(7, 1, i)) for i in range(20)]
    for out in outputs:
        assert out.shape == image.shape and out.dtype == torch.uint8
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # colour: false keeps grey grey
        corner = border_colour(out.permute(1, 2, 0).numpy())[0]
        assert 210 * 0.9 - 1 <= corner <= 210 * 1.1 + 1  # rotated corners filled with the (brightened) border
    assert len({out.numpy().tobytes() for out in outputs}) == 20
    still = Augment(AugmentParams(rotate=False, flip=False, scale=(1.0, 1.0), brightness=(1.0, 1.0)))
    assert torch.equal(still(image, sample_generator(7, 1, 3)), image)


def test_training_images_are_augmented_and_validation_images_never(project, monkeypatch):
    plan, images, cfg, augment_cfg = setup(project, max_epochs=1)
    augmented, scored = [], []
    real_augment, real_evaluate = Augment.__call__, finetuning.evaluate

    def spy_augment(self, image, generator):
        augmented.append(image.clone())
        return real_augment(self, image, generator)

    def spy_evaluate(net, loader, labels, dtype):
        scored.extend(x for batch, _, _ in loader for x in batch)
        return real_evaluate(net, loader, labels, dtype)

    monkeypatch.setattr(Augment, "__call__", spy_augment)
    monkeypatch.setattr(finetuning, "evaluate", spy_evaluate)
    finetuning.finetune(plan, images, cfg, augment_cfg, 42, CPU, project / "spy-checkpoints")
    train, val, test = (plain_images(images, s) for s in ("train", "val", "test"))
    assert len(scored) == len(val) and all(torch.equal(a, b) for a, b in zip(scored, val))  # never augmented
    assert len(augmented) == len(train)  # each training image once per epoch ...
    for image in augmented:  # ... and only training images
        assert any(torch.equal(image, t) for t in train)
        assert not any(torch.equal(image, other) for other in val + test)


# ---- checkpoints ----

class Killed(Exception):
    pass


def test_a_run_killed_after_an_epoch_resumes_to_the_uninterrupted_result(project, tmp_path, monkeypatch):
    plan, images, cfg, augment_cfg = setup(project)  # efficientnet_lite0, ImageNet weights, 8 images, 2 epochs
    whole = finetuning.finetune(plan, images, cfg, augment_cfg, 42, CPU, tmp_path / "whole")
    real_save = finetuning.save_checkpoint

    def kill_after_the_first_epoch(folder, state):
        real_save(folder, state)
        if state.epoch == 1:
            raise Killed

    monkeypatch.setattr(finetuning, "save_checkpoint", kill_after_the_first_epoch)
    with pytest.raises(Killed):
        finetuning.finetune(plan, images, cfg, augment_cfg, 42, CPU, tmp_path / "killed")
    monkeypatch.setattr(finetuning, "save_checkpoint", real_save)
    resumed = finetuning.finetune(plan, images, cfg, augment_cfg, 42, CPU, tmp_path / "killed")
    assert (whole.resumed_from, resumed.resumed_from) == (0, 1)
    assert (resumed.epochs, resumed.best_epoch) == (whole.epochs, whole.best_epoch) == (2, whole.best_epoch)
    assert set(resumed.backbone_state) == set(whole.backbone_state)
    for key, value in whole.backbone_state.items():
        assert torch.equal(resumed.backbone_state[key], value), key
    assert torch.equal(resumed.head.weight, whole.head.weight) and torch.equal(resumed.head.bias, whole.head.bias)
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in run.history] for run in (whole, resumed)]
    assert untimed[0] == untimed[1] and resumed.best_val_loss == whole.best_val_loss

    def no_training(*args, **kwargs):
        raise AssertionError("a finished training ran again")

    monkeypatch.setattr(finetuning, "train_one_epoch", no_training)  # killed after training, before the outputs
    again = finetuning.finetune(plan, images, cfg, augment_cfg, 42, CPU, tmp_path / "whole")
    assert again.resumed_from == 2 and torch.equal(again.head.weight, whole.head.weight)
    with pytest.raises(AssertionError, match="ran again"):  # other settings: that checkpoint is not used
        finetuning.finetune(plan, images, dataclasses.replace(cfg, lr_head=0.002), augment_cfg, 42, CPU,
                            tmp_path / "whole")


# ---- the stage's outputs, with predict and export ----

def test_the_stage_writes_a_model_file_features_curves_and_ends_its_checkpoint(stage_run):
    root, model = stage_run
    assert model.name == f"{LITE0}-ft" and model.backbone == LITE0 and model.backbone_state is not None
    assert model.weights.pretrained and model.weights.description.endswith("fine-tuned (all 9 blocks)")
    assert model.training.section == "finetune" and model.training.params["trained_blocks"][0] == "stem"
    assert ModelFile.load(root / "models" / f"{LITE0}-ft.pt").fingerprint() == model.fingerprint()
    meta = load_meta(root / "features")
    assert meta.backbone == LITE0 and meta.classes == model.classes and not meta.tta
    assert {p.name for p in (root / "checkpoints").iterdir()} == {FINISHED}
    assert not (root / "checkpoints" / CHECKPOINT).exists()
    curve = pd.read_csv(root / "live" / "plots" / "metrics" / "val" / "loss.tsv", sep="\t")
    assert curve["step"].tolist() == [1, 2]
    summary = json.loads((root / "live" / "metrics.json").read_text())
    assert summary["best_epoch"] == model.training.best_epoch


def test_a_finetuned_model_file_works_with_predict_and_export(stage_run, tmp_path):
    root, model = stage_run
    path = root / "models" / f"{LITE0}-ft.pt"
    table = predict.main(["--model", str(path), "--input", str(root / "raw"), "--out", str(tmp_path / "out"),
                          "--workers", "0", "--device", "cpu", "--params", str(root / "params.yaml")])
    test = pd.read_csv(root / "split" / "test.csv", keep_default_na=False)
    x_test, _ = load_split(root / "features", "test")  # what evaluate scores
    proba = model.probabilities(np.asarray(x_test))
    shown = table.set_index("id").loc[test["path"]]
    assert shown["predicted"].tolist() == [model.classes[i] for i in proba.argmax(axis=1)]
    assert np.allclose(shown["probability"].to_numpy(), proba.max(axis=1), atol=2e-4)
    checks = export.main(["--models", model.name, "--models-dir", str(root / "models"), "--split-dir",
                          str(root / "split"), "--params", str(root / "params.yaml"), "--exporter", "torchscript",
                          "--evaluations", str(tmp_path / "evaluations"), "--out-dir", str(tmp_path / "shipped")])
    assert checks[model.name]["onnx_max_abs_diff"] < 1e-4 and checks[model.name]["torchscript_max_abs_diff"] < 1e-4
    description = json.loads((tmp_path / "shipped" / model.name / f"{model.name}.json").read_text())
    assert description["weights"]["fine_tuned"] is True


# ---- test-time augmentation ----

def test_the_mean_of_the_views_does_not_depend_on_how_the_image_was_turned():
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert len({v.numpy().tobytes() for v in dihedral_views(images)}) == 8
    features = lambda x: x.float().flatten(1)[:, :40].numpy() * np.arange(40)  # noqa: E731 (depends on orientation)
    turned = torch.rot90(images, 1, dims=(2, 3)).flip(-1)
    assert np.allclose(mean_of_views(features, turned).astype(np.float32),
                       mean_of_views(features, images).astype(np.float32), atol=0.5)
    assert not np.allclose(features(turned), features(images))


def test_tta_features_average_the_views_of_val_and_test_images_and_predict_tta_matches(project, tmp_path):
    params = read_params(project / "params.yaml")
    parts, image_cfg = read_splits(project / "split"), section(ImageParams, params, "image")
    cfg = dataclasses.replace(section(ExtractParams, params, "extract"), tta=True)
    meta = run_extraction(LITE0, project / "raw", parts, tmp_path / "tta", cfg, image_cfg, PretrainedParams(), 42, CPU)
    assert meta.tta
    backbone = get_backbone(LITE0)
    extractor = FeatureExtractor(build_feature_network(LITE0, resolve_weights(LITE0, backbone.weights,
                                                                              PretrainedParams()), 42),
                                 torch.device("cpu"), None)
    images = finetuning.Images(project / "raw", parts, InputRecipe(mode="pad", preprocess=backbone.preprocess))
    train = torch.stack(plain_images(images, "train"))
    assert np.allclose(load_split(tmp_path / "tta", "train")[0], extractor(train), atol=2e-3)  # single view
    for split in ("val", "test"):
        plain = torch.stack(plain_images(images, split))
        rows = load_split(tmp_path / "tta", split)[0]
        assert np.allclose(rows, mean_of_views(extractor, plain), atol=2e-3), split
        assert not np.allclose(rows, extractor(plain), atol=2e-3), split
    model = lite0_model(classes=load_meta(tmp_path / "tta").classes)
    model.save(tmp_path / "lite0.pt")
    folder = tmp_path / "test-images"  # the test images only: 8 views each are 8 forward passes each
    for rel in parts["test"]["path"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes((project / "raw" / rel).read_bytes())
    table = predict.main(["--model", str(tmp_path / "lite0.pt"), "--input", str(folder), "--out",
                          str(tmp_path / "out"), "--workers", "0", "--device", "cpu", "--tta"])
    proba = model.probabilities(np.asarray(load_split(tmp_path / "tta", "test")[0]))  # what evaluate scores
    shown = table.set_index("id").loc[parts["test"]["path"]]
    assert np.allclose(shown["probability"].to_numpy(), proba.max(axis=1), atol=2e-4)
    assert shown["predicted"].tolist() == [model.classes[i] for i in proba.argmax(axis=1)]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["tta"] is True
