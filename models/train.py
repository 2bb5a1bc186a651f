"""Retrain the sample models on data that ships with scikit-learn and write them to models/.

Run from anywhere: ``python models/train.py``. Seeds, the split and the thread count are fixed,
so a rerun on the same torch version reproduces the weights. For each model it writes the
exported program (``<name>.pt2``, dynamic batch), the plain state dict (``<name>.state_dict.pt``)
and the held-out split (``.npz``), then records the held-out accuracy in ``models.json``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from torch import nn

MODELS_DIR = Path(__file__).resolve().parent
if str(MODELS_DIR) not in sys.path:
    sys.path.insert(0, str(MODELS_DIR))

from architectures import digits_cnn, tabular_mlp  # noqa: E402

SEED = 0
HELDOUT_FRACTION = 0.25
EXAMPLE_BATCH = 8
MAX_BATCH = 4096


@dataclass(frozen=True)
class Split:
    """Train and held-out arrays of one dataset, already in the model's input layout."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_heldout: np.ndarray
    y_heldout: np.ndarray


@dataclass(frozen=True)
class ModelSpec:
    """What to train, on which data, for how long, and where its files go."""

    name: str
    factory: Callable[[], nn.Module]
    dataset: str
    load_split: Callable[[], Split]
    heldout_file: str
    epochs: int
    batch_size: int
    lr: float


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and pin torch to two threads."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(train_test_split(x, y, test_size=HELDOUT_FRACTION, random_state=SEED, stratify=y))


def digits_split() -> Split:
    """8x8 digit images scaled to [0, 1], shaped (N, 1, 8, 8)."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_heldout, y_train, y_heldout = _split(x, data.target.astype(np.int64))
    return Split(x_train, y_train, x_heldout, y_heldout)


def breast_cancer_split() -> Split:
    """30 features standardised with the training split's mean and standard deviation."""
    data = load_breast_cancer()
    x_train, x_heldout, y_train, y_heldout = _split(data.data, data.target.astype(np.int64))
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    x_train, x_heldout = (((a - mean) / std).astype(np.float32) for a in (x_train, x_heldout))
    return Split(x_train, y_train, x_heldout, y_heldout)


def train(model: nn.Module, split: Split, spec: ModelSpec) -> nn.Module:
    """Adam on cross-entropy in train mode (so BatchNorm learns running statistics); returns eval model."""
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    optimiser = torch.optim.Adam(model.parameters(), lr=spec.lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(spec.epochs):
        order = torch.randperm(len(x))
        # drop the last partial batch: BatchNorm cannot train on a batch of one
        for start in range(0, len(x) - spec.batch_size + 1, spec.batch_size):
            idx = order[start : start + spec.batch_size]
            optimiser.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimiser.step()
    return model.eval()


def export_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export with a dynamic batch dimension and save the program (example inputs included)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)


def heldout_accuracy(module: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``module`` on the whole held-out split in one batch."""
    with torch.no_grad():
        predicted = module(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers (any dimensionality) in ``model``."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def build(spec: ModelSpec) -> dict[str, object]:
    """Train one model, write its files, and return its models.json entry."""
    seed_everything(SEED)
    split = spec.load_split()
    started = time.perf_counter()
    model = train(spec.factory(), split, spec)
    seconds = time.perf_counter() - started
    pt2 = MODELS_DIR / f"{spec.name}.pt2"
    export_program(model, torch.from_numpy(split.x_heldout[:EXAMPLE_BATCH]), pt2)
    torch.save(model.state_dict(), MODELS_DIR / f"{spec.name}.state_dict.pt")
    np.savez(MODELS_DIR / spec.heldout_file, x=split.x_heldout, y=split.y_heldout)
    # judge the saved program, not the eager model: that is what users of the file will run
    accuracy = heldout_accuracy(torch.export.load(pt2).module(), split.x_heldout, split.y_heldout)
    return {
        "file": pt2.name,
        "state_dict": f"{spec.name}.state_dict.pt",
        "architecture": f"models.architectures:{spec.factory.__name__}",
        "dataset": spec.dataset,
        "heldout": spec.heldout_file,
        "heldout_size": len(split.y_heldout),
        "heldout_accuracy": accuracy,
        "batchnorm_layers": count_batchnorms(model),
        "input_shape": ["batch", *split.x_heldout.shape[1:]],
        "batch_range": [1, MAX_BATCH],
        "train_seconds": round(seconds, 2),
    }


SPECS = (
    ModelSpec(
        "digits_cnn",
        digits_cnn,
        "sklearn.datasets.load_digits",
        digits_split,
        "digits_heldout.npz",
        epochs=15,
        batch_size=32,
        lr=1e-2,
    ),
    ModelSpec(
        "tabular_mlp",
        tabular_mlp,
        "sklearn.datasets.load_breast_cancer",
        breast_cancer_split,
        "breast_cancer_heldout.npz",
        epochs=20,
        batch_size=16,
        lr=1e-3,
    ),
)


def main() -> None:
    """Retrain every sample model and rewrite models.json."""
    registry = {}
    for spec in SPECS:
        registry[spec.name] = build(spec)
        entry = registry[spec.name]
        print(
            f"{spec.name}: held-out accuracy {entry['heldout_accuracy']:.4f} "
            f"({entry['heldout_size']} samples), trained in {entry['train_seconds']:.1f}s"
        )
    (MODELS_DIR / "models.json").write_text(json.dumps(registry, indent=2) + "\n")


if __name__ == "__main__":
    main()
