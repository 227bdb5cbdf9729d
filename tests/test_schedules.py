import pytest

from byol.schedules import cosine_decay, learning_rate


def test_learning_rate_closed_form():
    base, batch, total, warmup = 0.2, 4096, 1000, 100
    peak = base * batch / 256
    assert learning_rate(0, base, batch, total, warmup) == 0.0
    assert learning_rate(50, base, batch, total, warmup) == pytest.approx(peak / 2)
    assert learning_rate(warmup, base, batch, total, warmup) == pytest.approx(peak)
    assert learning_rate(550, base, batch, total, warmup) == pytest.approx(peak / 2)  # half-way through cosine
    assert learning_rate(total, base, batch, total, warmup) == pytest.approx(0.0, abs=1e-12)


def test_learning_rate_without_warmup_starts_at_the_peak():
    assert learning_rate(0, 0.3, 512, 100, 0) == pytest.approx(0.3 * 2)


def test_learning_rate_rejects_impossible_schedules():
    with pytest.raises(ValueError):
        learning_rate(0, 0.1, 256, 10, 20)


def test_cosine_decay_closed_form():
    assert cosine_decay(0, 100, 2.0) == 2.0
    assert cosine_decay(50, 100, 2.0) == pytest.approx(1.0)
    assert cosine_decay(100, 100, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert cosine_decay(150, 100, 2.0) == pytest.approx(0.0, abs=1e-12)
