"""The one trainer of the new last layer (models/linear_head.py) on cached features.

:func:`fit_heads` trains it with the study's protocol (SGD with momentum on
shuffled mini-batches, after every epoch the validation cross-entropy, early stopping with
patience, the weights of the best validation epoch kept), for the train stage, for
cross-validation and for the open-set stage alike.

Several heads train at once: one per learning rate (``train.lr`` as a list) in each group of
rows (a fold of cross-validation; the train stage has one group). Each head has its own rows,
batch order (a generator seeded with ``seed + group``), gradient, momentum, early stopping and
kept weights: exactly what training it alone gives.

Speed (docs/performance.md, "Head training speed"; bench/head_speed.py measures it):

- the gradient of the cross-entropy of a linear layer is written out (softmax minus the
  one-hot target, times the batch) and the SGD update is torch's fused one, in place: a step
  is a few tensor operations on preallocated buffers, no autograd graph, no padding or masks,
  and nothing that waits for the device;
- a group's heads (its learning rates) share one product per step; groups never share a
  batch (each has its own order), so a group runs its whole epoch alone, its weights staying
  in the cache, and a group whose every head has stopped early is no longer trained (its later
  states are never used; with ``history`` it is, so the curves stay whole);
- on a CPU each group's steps run on one thread (the products are small: a pool of threads
  costs more than it saves, ten times more when the cores are shared); several groups
  (cross-validation's folds) are spread over one Python thread per usable core
  (plankton_transfer/settings.py); the scoring after each epoch uses every usable core when it
  is large (:data:`PARALLEL_WORK`), and one thread when it is not;
- on an x86-64 CPU the float32 products go through oneDNN (AVX-512 where the CPU has it;
  torch's MKL path takes AVX2 on AMD CPUs), with torch's ``addmm`` as the fallback: the same
  float32 arithmetic, summed in another order (float tolerance);
- on CUDA, a group's full-batch step reads its rows from the epoch's order on the device
  (a counter the step advances), so it has no host-side input and is captured once as a CUDA
  graph and replayed: one launch per step instead of a dozen, the same batches and result.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import math
import platform
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from plankton_transfer.models.linear_head import LinearHead
from plankton_transfer.params.train import TrainParams
from plankton_transfer.settings import usable_cores

Features = torch.Tensor | np.ndarray  # resident on the device (float32), or a memory-mapped float16 .npy
EVALUATION_CELLS = 1 << 24  # feature values scored at a time (64 MB of float32)
PARALLEL_WORK = 1 << 24  # multiply-adds (about 0.1 ms on one core) below which one thread does the work:
# waking more threads (or starting Python threads) costs more than it saves, and much more on shared cores
GRAPH_WARMUP_STEPS = 3  # real steps run on a side stream before a CUDA graph is captured


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """Rows (indices into the features) that some heads train on and are stopped by."""

    train: np.ndarray
    val: np.ndarray


@dataclasses.dataclass
class FitResult:
    """Per head (group-major: group g, learning rate j is head ``g * len(lrs) + j``)."""

    heads: list[LinearHead]  # the weights of each head's best validation epoch
    best_epoch: list[int]
    best_val_loss: list[float]
    epochs_run: list[int]  # when each head's early stopping fired (or max_epochs)
    history: list[dict[str, list[float]]]  # per epoch, with ``history=True``: train/val loss and accuracy per head


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def onednn_linear() -> Callable | None:
    """oneDNN's float32 linear layer on dense tensors (the op torch.compile's CPU code calls),
    where this torch has it and it agrees with ``addmm`` on a probe; None elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x, w, b, d = (torch.randn(shape, generator=g) for shape in ((5, 64), (7, 64), (7,), (5, 7)))
        if not torch.allclose(op(x, w, b, "none", [], ""), torch.addmm(b, x, w.t()), atol=1e-4):
            return None
        if not torch.allclose(op(d.t(), x.t(), None, "none", [], ""), d.t() @ x, atol=1e-4):  # strided, as the gradient
            return None
    except (AttributeError, RuntimeError):
        return None
    return op


@functools.cache
def fused_sgd() -> Callable | None:
    """torch's fused SGD update (what ``torch.optim.SGD(fused=True)`` calls: the momentum buffer and
    the weight updated in one pass), where this torch has it; None elsewhere."""
    return getattr(torch, "_fused_sgd_", None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` in float32: oneDNN on an x86-64 CPU, ``addmm`` elsewhere."""
    op = onednn_linear() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if op is not None:
        return op(x, weight, bias, "none", [], "")
    return torch.addmm(bias, x, weight.t()) if bias is not None else torch.mm(x, weight.t())


def take_rows(x: Features, idx: torch.Tensor, device: torch.device, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``idx`` (any shape) as float32 on ``device``: indexed where they are resident (into
    ``out`` when given), read from the memory-mapped file otherwise (the same float16 values
    either way)."""
    if isinstance(x, torch.Tensor):
        if out is not None and x.dtype == torch.float32 and idx.dim() == 1:
            return torch.index_select(x, 0, idx, out=out[:len(idx)])
        return x[idx].float()
    flat = idx.reshape(-1).cpu().numpy()
    rows = torch.from_numpy(np.asarray(x[flat], dtype=np.float32)).to(device)
    return rows.view(*idx.shape, x.shape[1])


class HeadStack:
    """K heads as stacked tensors (weight (K, C, D), bias (K, C)) with SGD momentum buffers,
    initialised as one ``nn.Linear`` (torch's default, as the study's replaced layer) copied K times."""

    def __init__(self, k: int, dim: int, classes: int, seed: int, device: torch.device) -> None:
        torch.manual_seed(seed)
        template = nn.Linear(dim, classes)
        self.weight = template.weight.detach().to(device).expand(k, -1, -1).clone()
        self.bias = template.bias.detach().to(device).expand(k, -1).clone()
        self.weight_buf, self.bias_buf = torch.zeros_like(self.weight), torch.zeros_like(self.bias)

    def head(self, k: int) -> LinearHead:
        return LinearHead(self.weight[k].detach().cpu().clone(), self.bias[k].detach().cpu().clone())


def contiguous_span(rows: np.ndarray) -> slice | None:
    """``rows`` as a slice when they are consecutive (the train stage's splits), else None."""
    rows = np.asarray(rows)
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return slice(int(rows[0]), int(rows[0]) + len(rows))
    return None


class Group:
    """One group's heads (one per learning rate) as views of the stack, their rows, batch
    order and momentum state, and the step of the study's SGD on them."""

    def __init__(self, stack: HeadStack, index: int, per_group: int, rows: RowGroup, lrs: list[float],
                 generator: torch.Generator, cfg: TrainParams) -> None:
        device = stack.weight.device
        self.index, self.cfg = index, cfg
        self.heads = slice(index * per_group, (index + 1) * per_group)
        classes, dim = stack.weight.shape[1:]
        self.shape = (per_group, classes)
        self.weight = stack.weight[self.heads].view(per_group * classes, dim)  # views: updated in place
        self.bias = stack.bias[self.heads].view(-1)
        self.weight_buf = stack.weight_buf[self.heads].view(per_group * classes, dim)
        self.bias_buf = stack.bias_buf[self.heads].view(-1)
        # each run of equal learning rates (usually one: every head): its weight rows, rate, parameters, buffers
        runs = [(lr, len(list(same))) for lr, same in itertools.groupby(lrs)]
        starts = np.cumsum([0] + [n for _, n in runs])
        self.rates = []
        for (lr, n), first in zip(runs, starts):
            part = slice(int(first) * classes, int(first + n) * classes)
            self.rates.append((part, lr, [self.weight[part], self.bias[part]],
                               [self.weight_buf[part], self.bias_buf[part]] if cfg.momentum else []))
        self.train = torch.as_tensor(rows.train, dtype=torch.long, device=device)
        self.val = torch.as_tensor(rows.val, dtype=torch.long, device=device)
        self.spans = {"train": contiguous_span(rows.train), "val": contiguous_span(rows.val)}
        self.generator = generator
        self.has_buf = False
        self.done = False  # every head stopped early
        self.batch = torch.empty((cfg.batch_size, dim), device=device)
        self.one_hot = torch.eye(classes, device=device)  # rows picked by label: no scatter (a CUDA graph's
        # capture allows no sync, which deterministic scatters may need)
        self.graph: GraphedStep | None = None

    def order(self) -> torch.Tensor:
        """This epoch's shuffled train rows (the group's generator, as the study's shuffling)."""
        return self.train[torch.randperm(len(self.train), generator=self.generator).to(self.train.device)]

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """One SGD step (torch.optim.SGD's update: momentum, no dampening, weight decay) of every
        head of the group on the batch ``xb`` (n, D) with labels ``yb`` (n,)."""
        n, (per_group, classes), cfg = len(yb), self.shape, self.cfg
        delta = torch.softmax(linear(xb, self.weight, self.bias).view(n, per_group, classes), dim=-1)
        delta.sub_(torch.index_select(self.one_hot, 0, yb).unsqueeze(1))  # softmax minus the one-hot target
        delta.mul_(1.0 / n)  # the gradient of the batch's mean cross-entropy, per logit
        flat = delta.view(n, per_group * classes)
        grad_w, grad_b = linear(flat.t(), xb.t()), flat.sum(0)  # (P * C, D), (P * C,)
        update = fused_sgd()
        if update is not None:  # one pass over weight, buffer and gradient
            for rows, lr, params, buffers in self.rates:
                update(params, [grad_w[rows], grad_b[rows]], buffers, weight_decay=cfg.weight_decay,
                       momentum=cfg.momentum, lr=lr, dampening=0.0, nesterov=False, maximize=False,
                       is_first_step=not self.has_buf)
            return
        if cfg.weight_decay:
            grad_w.add_(self.weight, alpha=cfg.weight_decay)
            grad_b.add_(self.bias, alpha=cfg.weight_decay)
        if cfg.momentum:
            if self.has_buf:
                torch.add(grad_w, self.weight_buf, alpha=cfg.momentum, out=self.weight_buf)
                torch.add(grad_b, self.bias_buf, alpha=cfg.momentum, out=self.bias_buf)
            else:  # the first step: the buffer is the gradient
                self.weight_buf.copy_(grad_w)
                self.bias_buf.copy_(grad_b)
            grad_w, grad_b = self.weight_buf, self.bias_buf
        for rows, lr, (weight, bias), _ in self.rates:
            weight.add_(grad_w[rows], alpha=-lr)
            bias.add_(grad_b[rows], alpha=-lr)

    def train_epoch(self, x: Features, y: torch.Tensor, graphs: bool) -> None:
        """One pass of the group's shuffled mini-batches (the last one shorter)."""
        order, size = self.order(), self.cfg.batch_size
        full = len(order) // size
        start = 0
        if graphs and isinstance(x, torch.Tensor) and self.has_buf and full:
            if self.graph is None:
                self.graph = GraphedStep(self, x, y)
            start = self.graph.run(order, full) * size
        for start in range(start, len(order), size):
            idx = order[start:start + size]
            self.step(take_rows(x, idx, y.device, out=self.batch), y[idx])
            self.has_buf = True

    @torch.inference_mode()
    def evaluate(self, x: Features, y: torch.Tensor, split: str, threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each head's mean cross-entropy and accuracy over the group's ``split`` rows; (P,) each.
        The product runs on ``threads`` threads, the small steps after it on the caller's."""
        rows, span = (self.train, self.spans["train"]) if split == "train" else (self.val, self.spans["val"])
        per_group, classes = self.shape
        loss_sum = torch.zeros(per_group, device=y.device)
        correct = torch.zeros(per_group, device=y.device)
        chunk = max(1, EVALUATION_CELLS // max(1, x.shape[1]))
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            if span is not None and isinstance(x, torch.Tensor) and x.dtype == torch.float32:
                features = x[span.start + start:span.start + start + len(part)]  # a view: no copy
            else:
                features = take_rows(x, part, y.device)
            with torch_threads(threads if len(part) * x.shape[1] * per_group * classes >= PARALLEL_WORK else 1):
                logits = linear(features, self.weight, self.bias).view(len(part), per_group, classes)
            target = y[part][:, None].expand(-1, per_group)
            loss = nn.functional.cross_entropy(logits.reshape(-1, classes), target.reshape(-1), reduction="none")
            loss_sum += loss.view(len(part), per_group).sum(0)
            correct += (logits.argmax(-1) == target).sum(0)
        n = max(1, len(rows))
        return loss_sum / n, correct / n


class GraphedStep:
    """A group's full-batch step with no host-side input: the batch's rows are read from the
    epoch's ``order`` on the device at ``position``, a counter the step advances itself, into
    fixed buffers. On CUDA it is captured once as a CUDA graph (after a few real steps on a side
    stream, as torch.cuda.graphs asks) and replayed once per step; elsewhere it runs as is
    (what the CPU tests check: the same batches, so the same heads)."""

    def __init__(self, group: Group, x: torch.Tensor, y: torch.Tensor) -> None:
        self.group, self.x, self.y = group, x, y
        size, device = group.cfg.batch_size, y.device
        self.order = torch.empty(len(group.train), dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.offsets = torch.arange(size, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def step(self) -> None:
        idx = torch.index_select(self.order, 0, self.position + self.offsets)
        self.position += len(self.offsets)
        self.group.step(take_rows(self.x, idx, self.y.device, out=self.group.batch), torch.index_select(self.y, 0, idx))

    def run(self, order: torch.Tensor, steps: int) -> int:
        """The epoch's first ``steps`` full batches of ``order``; returns how many were run."""
        self.order.copy_(order)
        self.position.zero_()
        done = 0
        if self.y.device.type == "cuda" and self.graph is None:
            if steps <= GRAPH_WARMUP_STEPS:
                return 0  # too few to be worth a capture: the caller runs them
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_STEPS):
                    self.step()
            torch.cuda.current_stream().wait_stream(side)
            done = GRAPH_WARMUP_STEPS
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step()  # recorded, not run
        for _ in range(done, steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.step()
        return steps


def use_graphs(device: torch.device) -> bool:
    """Whether full-batch steps run as :class:`GraphedStep` (on CUDA: captured graphs)."""
    return device.type == "cuda"


def run_groups(work: Callable[[Group], None], groups: list[Group], threads: int) -> None:
    """``work`` on every group: in turn, or spread over ``threads`` Python threads, each
    running its share of groups with one torch thread (groups share nothing while training)."""
    if threads <= 1 or len(groups) <= 1:
        for group in groups:
            work(group)
        return
    shares = [groups[i::threads] for i in range(threads)]

    def run_share(share: list[Group]) -> None:
        torch.set_num_threads(1)  # this thread's own setting (OpenMP's is per thread)
        for group in share:
            work(group)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(run_share, share) for share in shares]:
            future.result()


def fit_heads(x: Features, y: torch.Tensor, groups: list[RowGroup], n_classes: int, cfg: TrainParams, seed: int,
              history: bool = False, progress: Callable[[int, dict], None] | None = None,
              first_group: int = 0) -> FitResult:
    """Train ``len(cfg.lrs)`` heads on each group's train rows until every head's validation loss
    has not improved for ``cfg.patience`` epochs (or ``cfg.max_epochs``).

    Group ``g``'s batch order comes from a generator seeded with ``seed + first_group + g``, so
    groups can be trained in chunks (``first_group``: the chunk's first group) with the result
    of training them all at once."""
    device, per_group = y.device, len(cfg.lrs)
    k = len(groups) * per_group
    stack = HeadStack(k, x.shape[1], n_classes, seed, device)
    states = [Group(stack, i, per_group, rows, cfg.lrs, torch.Generator().manual_seed(seed + first_group + i), cfg)
              for i, rows in enumerate(groups)]
    best_loss, best_epoch = [math.inf] * k, [0] * k
    best_heads = [stack.head(i) for i in range(k)]
    stopped: list[int | None] = [None] * k
    rows_seen: list[dict[str, list[float]]] = []
    cpu = device.type == "cpu"
    cores = usable_cores()
    graphs = use_graphs(device)
    val_loss, val_acc = torch.full((k,), math.inf), torch.zeros(k)
    for epoch in range(1, cfg.max_epochs + 1):
        live = [g for g in states if history or not g.done]
        work = sum(len(g.train) for g in live) * 2 * x.shape[1] * per_group * n_classes  # multiply-adds per epoch
        with torch_threads(1 if cpu else cores):
            run_groups(lambda g: g.train_epoch(x, y, graphs), live,
                       min(cores, len(live)) if cpu and work >= PARALLEL_WORK else 1)
            for g in live:
                val_loss[g.heads], val_acc[g.heads] = (t.cpu() for t in g.evaluate(x, y, "val", cores))
            if history:
                train = [torch.cat(parts).cpu() for parts in zip(*(g.evaluate(x, y, "train", cores) for g in states))]
                rows_seen.append({"train_loss": train[0].tolist(), "train_accuracy": train[1].tolist(),
                                  "val_loss": val_loss.tolist(), "val_accuracy": val_acc.tolist()})
        for g in live:
            for i in range(g.heads.start, g.heads.stop):
                if stopped[i] is not None:
                    continue
                if val_loss[i] < best_loss[i]:
                    best_loss[i], best_epoch[i], best_heads[i] = float(val_loss[i]), epoch, stack.head(i)
                elif epoch - best_epoch[i] >= cfg.patience:
                    stopped[i] = epoch
            g.done = all(stopped[i] is not None for i in range(g.heads.start, g.heads.stop))
        if progress is not None:
            progress(epoch, {"val_loss": val_loss.tolist()})
        if all(s is not None for s in stopped):
            break
    epochs_run = [s if s is not None else epoch for s in stopped]
    return FitResult(best_heads, best_epoch, best_loss, epochs_run, rows_seen)


def best_of(result: FitResult, group: int, per_group: int) -> int:
    """The head of ``group`` (one per learning rate) with the lowest validation loss; the test
    split is never looked at."""
    heads = range(group * per_group, (group + 1) * per_group)
    return min(heads, key=lambda k: result.best_val_loss[k])


def train_linear_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                      n_classes: int, cfg: TrainParams, seed: int, device: torch.device | None = None) -> LinearHead:
    """One head on in-memory features, early-stopped on (x_val, y_val); the best learning rate of
    ``cfg.lrs`` on validation loss (the open-set stage's held-out-class heads, the active-learning
    rounds). The train stage's protocol and trainer, as :func:`fit_heads` runs it."""
    device = device or torch.device("cpu")
    x = torch.from_numpy(np.concatenate([np.asarray(x_train, np.float32), np.asarray(x_val, np.float32)])).to(device)
    y = torch.from_numpy(np.concatenate([y_train, y_val]).astype(np.int64)).to(device)
    group = RowGroup(np.arange(len(y_train)), np.arange(len(y_train), len(y)))
    result = fit_heads(x, y, [group], n_classes, cfg, seed)
    return result.heads[best_of(result, 0, len(cfg.lrs))]
