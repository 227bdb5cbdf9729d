"""The Hugging Face Hub layout of an exported encoder, through huggingface_hub's ``PyTorchModelHubMixin``.

``HubEncoder.save_pretrained(folder)`` writes ``config.json`` (the export's metadata: architecture, input
normalisation, the weights' digest), ``model.safetensors`` and a model card;
``HubEncoder.from_pretrained(folder or repo id)`` reads them back; ``push_to_hub`` shares them. Loading never
unpickles (a repository that only holds a pickled ``pytorch_model.bin`` is refused), the weights must match the
architecture exactly, and their data the digest.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import PyTorchModelHubMixin

from byol.errors import CheckpointError
from byol.metadata import ARCHITECTURE_KEYS, check_metadata, weights_digest
from byol.networks import ResNet


class HubEncoder(
    ResNet,
    PyTorchModelHubMixin,
    library_name="byol",
    tags=["byol", "self-supervised-learning", "image-feature-extraction"],
    paper_url="https://arxiv.org/abs/2006.07733",
    pipeline_tag="image-feature-extraction",
):
    """The online encoder of a BYOL run, configured by its export metadata (``byol.export``)."""

    def __init__(self, **metadata: Any) -> None:
        check_metadata(metadata, "config.json")
        super().__init__(**{key: metadata[key] for key in ARCHITECTURE_KEYS})
        self.metadata = metadata
        self.eval()

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs: Any) -> HubEncoder:
        """Every weight, and nothing else (a partial load would give a silently random encoder), and the weights
        the export's digest names (safetensors checks its header, not its data)."""
        model: HubEncoder = super()._from_pretrained(strict=True, **kwargs)
        expected = model.metadata.get("sha256")
        if expected is not None and weights_digest(model.state_dict()) != expected:
            raise CheckpointError("model.safetensors does not hold the weights config.json was written with")
        return model

    @classmethod
    def _load_as_pickle(cls, *args: Any, **kwargs: Any) -> HubEncoder:  # type: ignore[override]
        raise CheckpointError("this repository holds pickled weights only (pytorch_model.bin); byol loads safetensors")
