"""The finetune stage's work: a backbone's last blocks (or all of it) and a new head, trained on
the train images of the split, augmented, early-stopped on the validation images.

Beyond the study's protocol (frozen backbone, new last layer: models/training.py), which stays
the pipeline's default. What is the same everywhere else:

- the network is the project's feature path (models/feature_net.py: normalisation, the
  backbone built from the same verified weights as extract, channels_last) plus a new linear
  head initialised as the train stage's (``nn.Linear`` under ``base.seed``);
- images are read and preprocessed as extract reads them (data/loading.py ``ImageFiles``,
  data/preprocess.py ``make_transform``); only the training images are augmented
  (data/augment.py), the validation images never;
- the result is the same model file as the train stage's (models/model_file.py), with the
  fine-tuned backbone's weights in ``backbone_state``: evaluate, compare, predict, export and
  the thresholds use it unchanged.

Training: AdamW with one learning rate for the backbone's blocks and one for the head, set per
epoch by a cosine or step schedule; weighted cross-entropy (``finetune.class_weights``) with
optional label smoothing; the validation cross-entropy (plain) after every epoch, early stopping
with patience and the best epoch's weights kept. bf16 autocast on CUDA, float32 on the CPU.
Blocks outside ``finetune.unfreeze`` stay frozen and in eval mode (their batch-norm statistics
are the pretrained ones). Every epoch ends with a checkpoint (models/checkpoints.py).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from plankton_transfer.data.augment import Augment, AugmentedImages
from plankton_transfer.data.features import load_split
from plankton_transfer.data.loading import ImageFiles, make_loader
from plankton_transfer.data.preprocess import draft_size, make_transform
from plankton_transfer.data.split_files import SPLITS, split_fingerprint
from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import Backbone, get_backbone
from plankton_transfer.models.checkpoints import Checkpoint, cpu_state, fingerprint, load_checkpoint, save_checkpoint
from plankton_transfer.models.extraction import class_names, unusable_file_message
from plankton_transfer.models.feature_net import FeatureNetwork, autocast_dtype, build_feature_network
from plankton_transfer.models.linear_head import LinearHead
from plankton_transfer.models.model_file import ModelFile, TrainingInfo
from plankton_transfer.models.provenance import FeatureMeta, InputRecipe
from plankton_transfer.models.thresholds import class_thresholds
from plankton_transfer.models.training import calibrate
from plankton_transfer.models.weights import ResolvedWeights, resolve_weights
from plankton_transfer.params.augment import AugmentParams
from plankton_transfer.params.finetune import FinetuneParams
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.runtime import environment, resolve_device, use_deterministic_algorithms
from plankton_transfer.settings import RunSettings


@dataclasses.dataclass(frozen=True)
class Plan:
    """What is checked before any compute: the backbone, its weights, the blocks to train."""

    backbone: Backbone
    weights: ResolvedWeights
    blocks: tuple[str, ...]  # the trained blocks' names

    @property
    def description(self) -> str:
        """How the backbone was tuned, in words (the weights' description in reports)."""
        if not self.blocks:
            return "frozen, new head trained on augmented images"
        if len(self.blocks) == len(self.backbone.blocks):
            return f"fine-tuned (all {len(self.blocks)} blocks)"
        return f"fine-tuned (last {len(self.blocks)} of {len(self.backbone.blocks)} blocks: {', '.join(self.blocks)})"


def plan_finetuning(name: str, cfg: FinetuneParams, pretrained_cfg: PretrainedParams) -> Plan:
    """The backbone, its verified weights (as extract finds them) and the blocks to train, or one line."""
    backbone = get_backbone(name)
    blocks = backbone.trainable_blocks(cfg.unfreeze)
    return Plan(backbone, resolve_weights(name, backbone.weights, pretrained_cfg), blocks)


@dataclasses.dataclass(frozen=True)
class Images:
    """The split's images, as the extract stage reads them."""

    raw: Path
    parts: dict[str, pd.DataFrame]
    recipe: InputRecipe

    def files(self, split: str) -> ImageFiles:
        """Preprocessed uint8 images of ``split`` (make_transform's output, nothing else)."""
        rows, pre = self.parts[split], self.recipe
        return ImageFiles(self.raw, rows["path"].tolist(), make_transform(pre.preprocess, pre.mode, pre.image),
                          pre.image, draft_size(pre.preprocess, pre.mode), sha256=rows["sha256"].tolist())

    def labels(self, split: str) -> torch.Tensor:
        return torch.tensor(self.parts[split]["label"].to_numpy(dtype=np.int64))

    @property
    def classes(self) -> tuple[str, ...]:
        return class_names(pd.concat([self.parts[s] for s in SPLITS], ignore_index=True))


class FinetuneNetwork(nn.Module):
    """uint8 images (N, 3, S, S) -> class logits: the feature network, then a new linear head."""

    def __init__(self, features: FeatureNetwork, feature_dim: int, n_classes: int, seed: int) -> None:
        super().__init__()
        self.features = features
        torch.manual_seed(seed)  # the head starts as the train stage's (models/heads.py HeadStack)
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features.normalize(images).contiguous(memory_format=torch.channels_last)
        return self.head(self.features.backbone(x).float())


def block_modules(plan: Plan, backbone: nn.Module) -> list[nn.Module]:
    paths = dict(plan.backbone.blocks)
    return [backbone.get_submodule(path) for name in plan.blocks for path in paths[name]]


def build_network(plan: Plan, n_classes: int, seed: int, device: torch.device) -> tuple[FinetuneNetwork, list]:
    """The network from the plan's weights, its trained blocks unfrozen; (network, trained modules)."""
    features = build_feature_network(plan.backbone.name, plan.weights, seed)
    net = FinetuneNetwork(features, plan.backbone.feature_dim, n_classes, seed)
    trained = block_modules(plan, features.backbone)
    for module in trained:
        module.requires_grad_(True)
    return net.to(device).to(memory_format=torch.channels_last), trained


def set_training(net: FinetuneNetwork, trained: list[nn.Module]) -> None:
    """Train mode for the trained blocks and the head only: frozen blocks keep their batch-norm statistics."""
    net.eval()
    for module in [*trained, net.head]:
        module.train()


def make_optimizer(net: FinetuneNetwork, trained: list[nn.Module], cfg: FinetuneParams) -> torch.optim.AdamW:
    """AdamW, the backbone's trained blocks in group 0 (when any), the head in the last group."""
    groups = []
    backbone_params = [p for m in trained for p in m.parameters()]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": cfg.lr_backbone})
    groups.append({"params": list(net.head.parameters()), "lr": cfg.lr_head})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def lr_factor(epoch: int, cfg: FinetuneParams) -> float:
    """The schedule's factor for ``epoch`` (1-based): cosine from 1 towards 0 at max_epochs, or
    step: x0.1 after half and again after three quarters of max_epochs."""
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / cfg.max_epochs))
    return 0.1 ** sum(epoch - 1 >= int(cfg.max_epochs * f) for f in (0.5, 0.75))


def set_learning_rates(optimizer: torch.optim.Optimizer, epoch: int, cfg: FinetuneParams) -> list[float]:
    base = [cfg.lr_backbone] * (len(optimizer.param_groups) - 1) + [cfg.lr_head]
    for group, lr in zip(optimizer.param_groups, base):
        group["lr"] = lr * lr_factor(epoch, cfg)
    return [g["lr"] for g in optimizer.param_groups]


def class_weights(labels: torch.Tensor, n_classes: int, mode: str) -> torch.Tensor | None:
    """``inverse_quarter``: class c weighs (max_n / n_c)^0.25 (Panaïotis et al. 2026), so rare
    classes count more without dominating; ``none``: every image the same."""
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1).double()
    return (counts.max() / counts).pow(0.25).float()


def batches(loader: DataLoader, labels: torch.Tensor, device: torch.device):
    """(images, labels) on ``device`` from a loader of ImageFiles items (in ``labels``' order)."""
    offset = 0
    for images, errors, _ in loader:
        if errors:
            raise UserError(unusable_file_message(errors[0]))
        y = labels[offset:offset + len(images)]
        offset += len(images)
        yield images.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_one_epoch(net: FinetuneNetwork, trained: list[nn.Module], loader: DataLoader, labels: torch.Tensor,
                    optimizer: torch.optim.Optimizer, loss_fn: nn.Module, dtype: torch.dtype | None) -> dict[str, float]:
    """One pass over the (augmented, shuffled) training images; mean loss and accuracy, weighted by batch size."""
    set_training(net, trained)
    device = next(net.parameters()).device
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in batches(loader, labels, device):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    return {"loss": loss_sum / max(1, n), "accuracy": correct / max(1, n)}


@torch.inference_mode()
def evaluate(net: FinetuneNetwork, loader: DataLoader, labels: torch.Tensor,
             dtype: torch.dtype | None) -> dict[str, float]:
    """Mean cross-entropy (unweighted, unsmoothed) and accuracy over images never augmented."""
    net.eval()
    device = next(net.parameters()).device
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in batches(loader, labels, device):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(x).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    return {"loss": loss_sum / max(1, n), "accuracy": correct / max(1, n)}


def epoch_loader(images: Images, augment: Augment, seed: int, epoch: int, batch_size: int, workers: int,
                 device: torch.device) -> tuple[DataLoader, torch.Tensor]:
    """This epoch's training images, augmented, in an order drawn from (seed, epoch); and their labels."""
    order = torch.randperm(len(images.parts["train"]), generator=torch.Generator().manual_seed(seed + epoch))
    dataset = Subset(AugmentedImages(images.files("train"), augment, seed, epoch), order.tolist())
    return make_loader(dataset, batch_size, workers, device), images.labels("train")[order]


def run_fingerprint(plan: Plan, images: Images, cfg: FinetuneParams, augment_cfg: AugmentParams, seed: int) -> str:
    """What a checkpoint must share with this run to be resumed."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "models"}
    return fingerprint({"backbone": plan.backbone.name, "weights": plan.weights.sha256 or plan.weights.source,
                        "blocks": plan.blocks, "split": split_fingerprint(images.parts), "finetune": settings,
                        "augment": dataclasses.asdict(augment_cfg), "input": dataclasses.asdict(images.recipe),
                        "seed": seed})


@dataclasses.dataclass
class Finetuned:
    """The best epoch's backbone and head, and how training went."""

    backbone_state: dict[str, torch.Tensor]
    head: LinearHead
    best_epoch: int
    best_val_loss: float
    epochs: int
    seconds: float
    history: list[dict[str, float]]
    device: torch.device
    resumed_from: int  # the epoch a checkpoint was resumed after (0: from the start)


def finetune(plan: Plan, images: Images, cfg: FinetuneParams, augment_cfg: AugmentParams, seed: int,
             settings: RunSettings, checkpoints: Path) -> Finetuned:
    """Train, one checkpoint per epoch in ``checkpoints``, resuming from it when it belongs to this run."""
    device = resolve_device(settings.device)
    use_deterministic_algorithms()
    dtype = autocast_dtype("auto", device)
    n_classes = len(images.classes)
    net, trained = build_network(plan, n_classes, seed, device)
    optimizer = make_optimizer(net, trained, cfg)
    weight = class_weights(images.labels("train"), n_classes, cfg.class_weights)
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device),
                                  label_smoothing=cfg.label_smoothing)
    state = resume_or_start(checkpoints, run_fingerprint(plan, images, cfg, augment_cfg, seed), net, optimizer)
    resumed_from = state.epoch
    val_loader = make_loader(images.files("val"), cfg.batch_size, settings.workers, device)
    augment = Augment(augment_cfg)
    while not state.stopped:
        epoch = state.epoch + 1
        start = time.perf_counter()
        torch.manual_seed(seed + epoch)  # any global draw (dropout) repeats on resumption
        lrs = set_learning_rates(optimizer, epoch, cfg)
        loader, labels = epoch_loader(images, augment, seed, epoch, cfg.batch_size, settings.workers, device)
        train = train_one_epoch(net, trained, loader, labels, optimizer, loss_fn, dtype)
        val = evaluate(net, val_loader, images.labels("val"), dtype)
        state = next_state(state, net, optimizer, epoch, train, val, lrs, time.perf_counter() - start, cfg)
        save_checkpoint(checkpoints, state)
        print(f"finetune {plan.backbone.name} epoch {epoch}/{cfg.max_epochs}: train loss {train['loss']:.4f}, val loss "
              f"{val['loss']:.4f}, val accuracy {val['accuracy']:.3f} ({time.perf_counter() - start:.1f} s)")
    return finished(state, device, resumed_from)


def resume_or_start(checkpoints: Path, key: str, net: FinetuneNetwork,
                    optimizer: torch.optim.Optimizer) -> Checkpoint:
    """The checkpoint of this run, loaded into ``net`` and ``optimizer``; or the state before epoch 1."""
    state = load_checkpoint(checkpoints, key)
    if state is None:
        return Checkpoint(key, 0, 0, math.inf, False, 0.0, [], {}, {}, cpu_state(net))
    net.load_state_dict(state.network)
    optimizer.load_state_dict(state.optimizer)
    print(f"finetune: resuming after epoch {state.epoch} from {checkpoints}")
    return state


def next_state(state: Checkpoint, net: FinetuneNetwork, optimizer: torch.optim.Optimizer, epoch: int,
               train: dict[str, float], val: dict[str, float], lrs: list[float], seconds: float,
               cfg: FinetuneParams) -> Checkpoint:
    """The checkpoint after ``epoch``: best weights kept, early stopping decided."""
    improved = val["loss"] < state.best_val_loss
    best_epoch = epoch if improved else state.best_epoch
    row = {"train_loss": train["loss"], "train_accuracy": train["accuracy"], "val_loss": val["loss"],
           "val_accuracy": val["accuracy"], "lr_backbone": lrs[0] if len(lrs) > 1 else 0.0, "lr_head": lrs[-1],
           "seconds": seconds}
    return Checkpoint(
        fingerprint=state.fingerprint, epoch=epoch, best_epoch=best_epoch,
        best_val_loss=val["loss"] if improved else state.best_val_loss,
        stopped=epoch >= cfg.max_epochs or epoch - best_epoch >= cfg.patience, seconds=state.seconds + seconds,
        history=[*state.history, row], network=cpu_state(net), optimizer=optimizer.state_dict(),
        best=cpu_state(net) if improved else state.best)


def finished(state: Checkpoint, device: torch.device, resumed_from: int) -> Finetuned:
    """The best epoch's backbone (the stripped network's state dict, as the model file keeps it) and head."""
    backbone = {k.removeprefix("features.backbone."): v for k, v in state.best.items()
                if k.startswith("features.backbone.")}
    head = LinearHead(state.best["head.weight"].clone(), state.best["head.bias"].clone())
    return Finetuned(backbone, head, state.best_epoch, state.best_val_loss, state.epoch, state.seconds,
                     state.history, device, resumed_from)


def finetuned_model_file(name: str, result: Finetuned, features: Path, meta: FeatureMeta, cfg: FinetuneParams,
                         augment_cfg: AugmentParams, plan: Plan, target_precision: float, seed: int) -> ModelFile:
    """The model file of a fine-tuned model: the train stage's record, calibrated and given its
    thresholds on the fine-tuned network's validation features (``features``, from ``meta``)."""
    x_val, y_val = load_split(features, "val")
    calibration = calibrate(result.head, np.asarray(x_val), y_val)
    proba = result.head.probabilities(x_val, calibration.temperature)
    thresholds = class_thresholds(y_val, proba, list(meta.classes), target_precision, meta.weights.pretrained)
    params: dict[str, Any] = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "models"}
    params.update(augment={k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(augment_cfg).items()},
                  trained_blocks=list(plan.blocks))
    training = TrainingInfo(lr=cfg.lr_head, epochs=result.epochs, best_epoch=result.best_epoch,
                            best_val_loss=result.best_val_loss, seconds=round(result.seconds, 3), lr_sweep={},
                            params=params, seed=seed, features={"placement": "images", "device": str(result.device)},
                            environment=environment(result.device), section="finetune")
    return ModelFile(name=name, backbone=meta.backbone, weights=meta.weights, input=meta.input,
                     feature_dim=meta.feature_dim, classes=meta.classes, head=result.head, training=training,
                     calibration=calibration, thresholds=thresholds, data=meta.data,
                     backbone_state=result.backbone_state)
