import json

import pytest

from byol.config import PRESETS, Config, apply_overrides, get_preset, validate
from byol.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "lr", "wd", "tau", "epochs"),
    [
        ("imagenet-40ep", 0.45, 1e-6, 0.97, 40),
        ("imagenet-100ep", 0.45, 1e-6, 0.99, 100),
        ("imagenet-300ep", 0.3, 1e-6, 0.99, 300),
        ("imagenet-1000ep", 0.2, 1.5e-6, 0.996, 1000),
    ],
)
def test_paper_presets(name, lr, wd, tau, epochs):
    c = get_preset(name)
    assert (c.optim.base_lr, c.optim.weight_decay, c.target.base_ema, c.train.epochs) == (lr, wd, tau, epochs)
    assert c.optim.batch_size == 4096 and c.optim.warmup_epochs == 10 and c.model.depth == 50
    assert (c.model.projector_hidden, c.model.projection_dim, c.model.predictor_hidden) == (4096, 256, 4096)
    assert c.augment.preset == "byol"


def test_every_preset_validates():
    for name in PRESETS:
        validate(get_preset(name))


def test_dotted_overrides_convert_types_and_do_not_mutate():
    base = get_preset("tiny")
    c = apply_overrides(base, {"optim.base_lr": "0.3", "train.online_probe": "false", "model.depth": "34"})
    assert c.optim.base_lr == 0.3 and c.train.online_probe is False and c.model.depth == 34
    assert base.optim.base_lr == 1.0


def test_unknown_key_and_bad_value_are_refused_with_the_valid_choices():
    with pytest.raises(ConfigError, match=r"optim\.base_lr"):
        apply_overrides(Config(), {"optim.lr": "1"})
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(Config(), {"model.depth": "fifty"})
    with pytest.raises(ConfigError, match="valid presets"):
        get_preset("huge")


INVALID = [
    ("model.depth", "42"),
    ("model.stem", "huge"),
    ("model.width", "0"),
    ("model.projector_hidden", "0"),
    ("model.projection_dim", "-1"),
    ("model.projector_depth", "0"),
    ("model.predictor", "deep"),
    ("model.predictor_hidden", "0"),
    ("model.predictor_depth", "0"),
    ("optim.base_lr", "-1"),
    ("optim.weight_decay", "-0.1"),
    ("optim.momentum", "1.0"),
    ("optim.eta", "0"),
    ("optim.batch_size", "1"),
    ("optim.warmup_epochs", "-1"),
    ("optim.predictor_lr_scale", "-2"),
    ("optim.projector_lr_scale", "-2"),
    ("optim.accumulation_steps", "0"),
    ("target.base_ema", "1.5"),
    ("target.init", "zeros"),
    ("target.schedule", "linear"),
    ("target.network", "none"),
    ("loss.temperature", "0"),
    ("loss.beta", "-1"),
    ("data.dataset", "mnist"),
    ("data.image_size", "4"),
    ("data.num_workers", "-1"),
    ("augment.preset", "nope"),
    ("augment.crop_min_scale", "0"),
    ("train.epochs", "0"),
    ("train.log_every", "0"),
    ("train.checkpoint_every", "0"),
    ("train.keep_checkpoints", "0"),
    ("train.knn_every", "-1"),
    ("train.max_steps", "-1"),
    ("train.precision", "fp8"),
    ("train.memory_format", "nhwc"),
    ("train.on_nonfinite", "ignore"),
    ("train.max_skipped_steps", "-1"),
]


@pytest.mark.parametrize(("key", "value"), INVALID)
def test_validation_names_the_field(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(apply_overrides(get_preset("tiny"), {key: value}))


def test_batch_must_split_into_accumulation_steps():
    with pytest.raises(ConfigError, match=r"optim\.batch_size"):
        validate(apply_overrides(get_preset("tiny"), {"optim.accumulation_steps": "5"}))


def test_round_trip_through_json(tmp_path):
    c = apply_overrides(get_preset("cpu-demo"), {"optim.base_lr": "0.7"})
    c.save(tmp_path / "c.json")
    assert Config.from_dict(json.loads((tmp_path / "c.json").read_text())) == c
