"""What a user chooses on the command line, for the commands whose own modules need torch: each owner imports
its choices from here, and the parsers read them without importing torch (`byol COMMAND --help` answers at once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# s3://, gs://, https://, file://: not a folder of this machine (byol.config refuses it where a folder goes,
# byol.data.remote reads the scheme and the rest of the ones it serves)
URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)", re.DOTALL)

# byol.data.folder: how an image folder's labels are read (class folders where the layout has them, or none)
LABELS = ("auto", "folders", "none")
ORDERS = ("auto", "global", "shards")  # data.order: how a prepared set's epoch is shuffled (byol.data.loaders)

# byol.data.masks: the layouts of images and per-pixel masks that `byol segment` reads
MASK_DATASETS = ("folder", "camvid")

# byol.export: what `byol export --format` writes
EXPORT_FORMATS = ("safetensors", "hub", "onnx", "torchvision")

# byol.demo: wall-time budgets of the whole demo (set-up excluded): the README promises 10 minutes on a 2-core
# CPU and 2 on one GPU; the budgets leave room for what the plan cannot time (start-up, report, a busy machine).
DEMO_BUDGET_MINUTES = {"cpu": 9.0, "cuda": 1.5}

# byol.curate: how `byol select` chooses the images to label first
SELECT_METHODS = ("typical", "diverse", "random")
SELECT_SPACES = ("head", "features")  # the projector's output (where the .npz has it, the default) or the encoder's

# byol.prepare: the file, in a prepared folder, that lists the source files left out as unreadable
UNREADABLE = "unreadable.tsv"


@dataclass(frozen=True)
class PrepareSettings:
    """How `byol prepare` stores images: long side at most ``max_side`` px, JPEG ``quality``, ``shard_images``
    per shard; ``labels`` as the folder reader takes it (:data:`LABELS`); ``shuffle``: shards hold a seeded
    permutation of the listing (every class in every shard), not runs of it."""

    max_side: int = 512
    quality: int = 90
    shard_images: int = 2000
    labels: str = "auto"
    shuffle: bool = True
