"""Semi-supervised fine-tuning on a class-balanced fraction of the labels (paper section 4.2, App. C.2).

The whole online encoder and a new linear head are trained on a seeded, class-balanced subset of the training
labels (1% or 10% in the paper) with SGD, Nesterov momentum 0.9 and a cosine schedule, on random crop + flip
views, BN in training mode. The learning rate and the number of epochs are chosen on a validation split held
out from the rest of the training set; the chosen pair is refitted on the labelled subset and evaluated once
on the test set.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from byol.augment import evaluation_view
from byol.data import Dataset, eval_batches
from byol.evaluate.common import (
    augmented_batches,
    balanced_subset,
    classification_metrics,
    fit_classifier,
    split_train_val,
    validation_size,
)
from byol.evaluate.settings import FinetuneConfig
from byol.networks import ResNet


class Classifier(nn.Module):
    def __init__(self, encoder: ResNet, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def _fit(
    encoder: ResNet, labelled: Dataset, *, image_size: int, device: torch.device, lr: float, epochs: int,
    config: FinetuneConfig,
) -> Classifier:  # fmt: skip
    torch.manual_seed(config.seed)
    model = Classifier(copy.deepcopy(encoder), num_classes=len(labelled.classes)).to(device).train()
    views, steps = augmented_batches(
        labelled, image_size=image_size, batch_size=config.batch_size, seed=config.seed, device=device
    )
    fit_classifier(model, views, steps_per_epoch=steps, epochs=epochs, lr=lr, weight_decay=config.weight_decay)
    return model


@torch.no_grad()
def _evaluate(model: Classifier, dataset: Dataset, image_size: int, device: torch.device) -> dict[str, float]:
    model.eval()
    logits, labels = [], []
    for batch in eval_batches(dataset, batch_size=512, device=device, image_size=image_size):
        logits.append(model(evaluation_view(batch.images, image_size, dataset.mean, dataset.std)).float().cpu())
        labels.append(batch.labels.cpu())
    return classification_metrics(torch.cat(logits), torch.cat(labels), len(dataset.classes))


def finetune_evaluation(
    encoder: ResNet,
    *,
    train: Dataset,
    test: Dataset,
    image_size: int,
    device: torch.device,
    config: FinetuneConfig = FinetuneConfig(),
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep (lr, epochs) on the validation split, refit the best on the labelled subset, test once."""
    # The validation split first, then the label fraction of the images outside it (so 1 is valid: every
    # training image but the validation split's is labelled)
    pool, val_index = split_train_val(train.labels, validation_size(config.val_size, len(train)), config.seed)
    pool = pool.sort().values
    labelled_index = pool[balanced_subset(train.labels[pool], config.label_fraction, config.seed)]
    labelled, val = train.subset(labelled_index), train.subset(val_index)

    sweep = []
    grid = list(itertools.product(config.lrs, config.epochs))
    for lr, epochs in tqdm(grid, desc="fine-tune sweep (validation split)", disable=not progress):
        model = _fit(encoder, labelled, image_size=image_size, device=device, lr=lr, epochs=epochs, config=config)
        sweep.append({"lr": lr, "epochs": epochs, "val": _evaluate(model, val, image_size, device)})
    best = max(sweep, key=lambda r: r["val"]["top1"])
    model = _fit(encoder, labelled, image_size=image_size, device=device, lr=best["lr"], epochs=best["epochs"],
                 config=config)  # fmt: skip
    return {
        "protocol": f"fine-tune on {100 * config.label_fraction:g}% of the labels",
        **_evaluate(model, test, image_size, device),
        "labelled_images": len(labelled_index),
        "chosen_lr": best["lr"],
        "chosen_epochs": best["epochs"],
        "sweep": sweep,
        "settings": asdict(config) | {"lrs": list(config.lrs), "epochs": list(config.epochs)},
    }
