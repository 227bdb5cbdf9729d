"""torch.compile in a run (byol.compiling): the rule and its measurement, the cache, the fall-backs, and that a compiled
run is the eager run up to float rounding. Only the tests marked slow compile for real (on `tiny`)."""

import dataclasses
import functools
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import assert_same_networks, run_killed_and_resumed
from hypothesis import given, settings
from hypothesis import strategies as st

import byol.train as train_module
from byol import compiling
from byol.augment import PRESETS, TwoViews
from byol.checkpoint import latest_checkpoint, load_checkpoint
from byol.compiling import Decision, Estimate, History, Part, RunCompiler, decide
from byol.config import apply_overrides, get_preset
from byol.train import pretrain, resume

# --- the rule and the loop's measurement (no compiler involved) ---


@settings(max_examples=200, deadline=None)
@given(
    steps=st.integers(0, 10**7), eager_s=st.floats(0, 10), ratio=st.floats(0, 2), compile_s=st.floats(0, 1e4)
)  # fmt: skip
def test_the_rule_compiles_exactly_when_the_saving_over_the_run_exceeds_the_compile_time(
    steps, eager_s, ratio, compile_s
):
    d = decide("networks", steps, eager_s, Estimate(ratio=ratio, compile_s=compile_s), "prior")
    assert d.compile == (steps * eager_s * (1 - ratio) > compile_s) and d.by == "rule"
    assert d.saving_s == pytest.approx(steps * eager_s * (1 - ratio))
    line = d.line()
    assert "\n" not in line and f"{steps} steps" in line and ("on" if d.compile else "off") in line.split("(")[0]


class FakePart(Part):
    def __init__(self, name, log):
        super().__init__(name, lambda: log.append(("compile", name)), lambda: log.append(("eager", name)))


def _compiler(setting, tmp_path, views_seconds, calls, records, settled):
    parts = {name: FakePart(name, calls) for name in compiling.PARTS}
    return RunCompiler(
        setting, parts, {"networks": "net-key", "views": "views-key"}, device=torch.device("cpu"),
        views_seconds=views_seconds, report=records.append, settled=lambda: settled.append(True),
        history=History(tmp_path / "history.json"),
    )  # fmt: skip


def test_auto_times_the_eager_steps_compiles_what_pays_measures_it_and_keeps_it(tmp_path):
    calls, records, settled = [], [], []
    views = iter([0.02, 0.02, 1.0, 0.01, 0.01, 0.01])  # eager twice; compiled: a first call that compiles, then 3
    c = _compiler("auto", tmp_path, lambda: next(views), calls, records, settled)
    c.after_step(5.0, remaining=10_000)  # the first step warms up: not counted
    for _ in range(compiling.TIMED_STEPS):
        c.after_step(0.1, remaining=10_000)
    # networks: 10,000 x 0.08 s x 0.2 = 160 s > 60 s (prior); views: 10,000 x 0.02 x 0.4 = 80 s > 50 s
    assert calls == [("compile", "views"), ("compile", "networks")] and c.phase == "compiling"
    assert records[-1][0]["eager_s"] == pytest.approx(0.08) and records[-1][1]["measured"]["ratio"] == 0.5
    c.after_step(30.0, remaining=9_996)  # the step that compiled the networks
    assert calls[-1] == ("eager", "networks") and c.phase == "timing"  # then eager and compiled in turn
    for _ in range(compiling.TIMED_STEPS):
        c.after_step(0.09, remaining=9_996)  # eager: networks 0.08 s + views 0.01 s
        c.after_step(0.07, remaining=9_996)  # compiled: networks 0.06 s + views 0.01 s
    assert c.phase == "done" and settled == [True]
    turns = [("eager", "networks"), ("compile", "networks")] * compiling.TIMED_STEPS
    assert calls == [("compile", "views"), ("compile", "networks"), *turns]  # it ends compiled
    networks = records[-1][0]
    assert networks["compile"] and networks["measured"] == {"ratio": 0.75, "compile_s": 29.93}
    history = json.loads((tmp_path / "history.json").read_text())
    assert history == {"net-key": {"ratio": 0.75, "compile_s": 29.93}, "views-key": {"ratio": 0.5, "compile_s": 0.99}}
    # the next run decides on what this one measured, its graphs now in the cache: seconds to compile, not the first's
    estimate, source = History(tmp_path / "history.json").estimate("net-key", compiling.PRIORS["networks"])
    assert estimate == Estimate(0.75, compiling.CACHED_COMPILE_S) and source == "history, its graphs in the cache"
    assert History(tmp_path / "history.json").estimate("views-key", compiling.PRIORS["views"]) == (
        Estimate(0.5, 0.99), "history")  # fmt: skip


def test_auto_goes_back_to_eager_when_the_compiled_part_is_slower(tmp_path):
    calls, records, settled = [], [], []
    history = tmp_path / "history.json"
    history.write_text(json.dumps({"net-key": {"ratio": 0.5, "compile_s": 1.0}}))
    c = _compiler("auto", tmp_path, lambda: 0.001, calls, records, settled)
    for seconds in [1.0] * (compiling.TIMED_STEPS + 1) + [2.0] + [1.0, 1.5] * compiling.TIMED_STEPS:
        c.after_step(seconds, remaining=1000)
    turns = [("eager", "networks"), ("compile", "networks")] * compiling.TIMED_STEPS
    assert calls == [("compile", "networks"), *turns, ("eager", "networks")] and settled == [True]
    assert not records[-1][0]["compile"] and records[-1][0]["measured"]["ratio"] > 1
    assert json.loads(history.read_text())["net-key"]["ratio"] > 1  # the next run will not compile it


@pytest.mark.parametrize("compile_s", [3.0, 51.0])  # a compile from the cache, and a first one (over CACHED_COMPILE_S)
def test_a_measurement_that_compiling_did_not_pay_keeps_the_part_eager_for_a_few_runs_then_it_is_measured_again(
    tmp_path, caplog, compile_s
):
    """One wrong measurement (a busy machine) must not stop compiling for good: after RETRY_AFTER eager runs the
    prior decides again, and the new measurement replaces the old."""
    history = tmp_path / "history.json"
    history.write_text(json.dumps({"net-key": {"ratio": 1.4, "compile_s": compile_s}}))

    def one_run():
        calls, records, settled = [], [], []
        c = _compiler("auto", tmp_path, lambda: 0.0, calls, records, settled)
        for _ in range(compiling.TIMED_STEPS + 1):
            c.after_step(1.0, remaining=10_000)  # 10,000 x 1 s: compiling pays unless the history says no gain
        return calls

    for run in range(compiling.RETRY_AFTER):
        assert ("compile", "networks") not in one_run()
        entry = {"ratio": 1.4, "compile_s": compile_s, "eager_runs": run + 1}
        assert json.loads(history.read_text())["net-key"] == entry
    with caplog.at_level("INFO", logger="byol.train"):
        assert one_run()[-1] == ("compile", "networks")
    assert any("compile networks: on" in r.getMessage() and f"kept {compiling.RETRY_AFTER} runs eager" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    c = _compiler("auto", tmp_path, lambda: 0.0, [], [], [])
    for seconds in [1.0] * (compiling.TIMED_STEPS + 1) + [9.0] + [1.0, 0.7] * compiling.TIMED_STEPS:
        c.after_step(seconds, remaining=10_000)
    assert json.loads(history.read_text())["net-key"] == {"ratio": 0.7, "compile_s": 8.3}  # measured anew
    history.write_text(json.dumps({"net-key": {"ratio": 1.4, "compile_s": compile_s, "eager_runs": "x"}}))
    assert ("compile", "networks") not in one_run()  # a count damaged by hand counts from 0
    assert json.loads(history.read_text())["net-key"]["eager_runs"] == 1
    history.write_text(json.dumps({"net-key": {"ratio": 0.7, "compile_s": 3.0}}))
    one_run_short = _compiler("auto", tmp_path, lambda: 0.0, [], [], [])
    for _ in range(compiling.TIMED_STEPS + 1):
        one_run_short.after_step(0.001, remaining=10)  # too short to pay: eager, on a measurement that did gain
    assert "eager_runs" not in json.loads(history.read_text())["net-key"]  # only a no-gain measurement counts runs


def test_the_compiled_networks_are_timed_against_eager_steps_beside_them_on_a_drifting_machine(tmp_path):
    """The machine slows down 2.5x after the decision: pairs of steps still give the compiled ratio (0.8)."""
    calls, records, settled = [], [], []
    c = _compiler("auto", tmp_path, lambda: 0.0, calls, records, settled)
    for _ in range(compiling.TIMED_STEPS + 1):
        c.after_step(1.0, remaining=10_000)  # networks: 10,000 x 1 s x 0.2 > 60 s: compiled
    c.after_step(40.0, remaining=10_000)
    for eager_s in [1.0, 2.5, 2.5]:
        c.after_step(eager_s, remaining=10_000)
        c.after_step(0.8 * eager_s, remaining=10_000)
    assert records[-1][0]["measured"]["ratio"] == pytest.approx(0.8) and calls[-1] == ("compile", "networks")


def test_a_run_too_short_to_pay_for_compiling_stays_eager_and_says_why(tmp_path, caplog):
    calls, records, settled = [], [], []
    c = _compiler("auto", tmp_path, lambda: 0.001, calls, records, settled)
    with caplog.at_level("INFO", logger="byol.train"):
        for _ in range(compiling.TIMED_STEPS + 1):
            c.after_step(0.05, remaining=100)
    assert calls == [] and settled == [True] and c.phase == "done"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compile ")]
    assert len(lines) == 2 and all(": off (100 steps x" in line and "from the prior" in line for line in lines)


@pytest.mark.parametrize(("channels_last", "compiles"), [(True, True), (False, False)])
def test_without_a_history_the_prior_of_the_networks_layout_decides(tmp_path, channels_last, compiles):
    # 10,000 steps x 0.04 s: channels_last's prior (0.8) saves 80 s > 60 s to compile, contiguous's (0.9) 40 s
    calls = []
    c = RunCompiler(
        "auto", {name: FakePart(name, calls) for name in compiling.PARTS}, {"networks": "n", "views": "v"},
        device=torch.device("cpu"), views_seconds=lambda: 0.0, history=History(tmp_path / "history.json"),
        channels_last=channels_last,
    )  # fmt: skip
    for _ in range(compiling.TIMED_STEPS + 1):
        c.after_step(0.04, remaining=10_000)
    assert (("compile", "networks") in calls) == compiles
    ratio = c.records["networks"]["ratio"]
    assert ratio == compiling.prior("networks", channels_last).ratio == (0.8 if channels_last else 0.9)


@pytest.mark.parametrize("steps", range(1, compiling.TIMED_STEPS + 1))
def test_a_run_that_ends_before_its_steps_are_timed_says_it_stayed_eager(tmp_path, caplog, steps):
    calls, records, settled = [], [], []
    c = _compiler("auto", tmp_path, lambda: 0.001, calls, records, settled)
    with caplog.at_level("INFO", logger="byol.train"):
        for remaining in reversed(range(steps)):
            c.after_step(0.05, remaining=remaining)
    assert calls == [] and c.phase == "done" and not (tmp_path / "history.json").exists()
    assert [(r["part"], r["compile"], r["by"]) for r in records[-1]] == [(p, False, "length") for p in compiling.PARTS]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compile ")]
    assert len(lines) == 2 and all("off (the run ended within its first" in line for line in lines)


@pytest.mark.parametrize("setting", ["true", "false"])
def test_the_users_setting_wins_over_the_rule(tmp_path, setting):
    calls, records, settled = [], [], []
    c = _compiler(setting, tmp_path, lambda: 1.0, calls, records, settled)
    for _ in range(10):
        c.after_step(100.0, remaining=10**9)  # a rule would compile this for sure
    assert calls == ([("compile", "networks"), ("compile", "views")] if setting == "true" else [])
    assert [r["by"] for r in records[-1]] == ["train.compile"] * 2 and not (tmp_path / "history.json").exists()


def test_an_unreadable_history_falls_back_to_the_priors(tmp_path):
    path = tmp_path / "history.json"
    for text in ("{not json", "[1, 2]", json.dumps({"k": {"ratio": "x"}}), json.dumps({"k": 3})):
        path.write_text(text)
        assert History(path).estimate("k", compiling.PRIORS["views"]) == (compiling.PRIORS["views"], "prior")
    History(path).record("k", Estimate(0.5, 2.0))
    assert History(path).estimate("k", compiling.PRIORS["views"]) == (Estimate(0.5, 2.0), "history")


def test_the_cache_is_the_users_cache_directory_and_a_users_own_choice_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(compiling.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiling.use_cache() == tmp_path / "xdg" / "byol" / "torch-compile"
    assert os.environ[compiling.CACHE_ENV] == str(tmp_path / "xdg" / "byol" / "torch-compile")
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "mine"))
    assert compiling.use_cache() == tmp_path / "mine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compiling.cache_dir() == compiling.Path.home() / ".cache" / "byol" / "torch-compile"


# two fresh interpreters importing torch._dynamo (about 6 s): `make test-slow`; the default suite keeps the cache's
# placement (the test above) and a run's use of it (test_a_run_records_its_compile_decisions_in_environment_json)
@pytest.mark.slow
def test_torchs_own_default_is_replaced_but_a_user_who_chose_it_keeps_it(tmp_path):
    """torch sets TORCHINDUCTOR_CACHE_DIR itself, to /tmp/torchinductor_<user>, the first time torch._dynamo is
    imported (an optimizer imports it: the demo's random-init evaluation did, before the run compiled)."""
    script = (
        "import os, torch, byol.compiling as c\n"
        "torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)\n"  # imports torch._dynamo
        "print(os.environ.get(c.CACHE_ENV) == c._torch_default(), c.use_cache())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != compiling.CACHE_ENV} | {"XDG_CACHE_HOME": str(tmp_path)}
    run = functools.partial(subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run(env=env).stdout.split() == ["True", str(tmp_path / "byol" / "torch-compile")]
    import torch._inductor.runtime.cache_dir_utils  # noqa: F401  (until torch loads it, it cannot have set the path)

    default = compiling._torch_default()  # the same path, chosen by the user before byol was loaded: kept
    assert default is not None
    assert run(env=env | {compiling.CACHE_ENV: default}).stdout.split() == ["True", default]


def test_a_run_records_its_compile_decisions_in_environment_json(tmp_path, monkeypatch):
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "cache"))
    config = apply_overrides(get_preset("tiny"), {"train.max_steps": 8})
    pretrain(config, tmp_path / "run", progress=False)
    starts = json.loads((tmp_path / "run" / "environment.json").read_text())
    records = starts[-1]["compile"]
    assert [r["part"] for r in records] == ["networks", "views"] and all(r["by"] == "rule" for r in records)
    assert all(not r["compile"] and r["steps"] == 8 - compiling.TIMED_STEPS - 1 and r["eager_s"] > 0 for r in records)
    assert not any((tmp_path / "run").rglob("*.so"))  # nothing compiled lands in the run directory


def test_a_compiled_step_runs_through_torch_compile_and_is_the_eager_step(tmp_path, monkeypatch):
    """The default suite's compiled steps: a run with train.compile true, its networks and views captured by
    torch.compile (dynamo's graphs, guards and graph breaks, byol's wrapper and its records) and run by the eager
    backend, which executes the captured graphs as they are: the losses are the eager run's. Inductor's generated
    code (about a minute a compile on these CPUs) is tested by the slow tests below, in `make test-slow`."""
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    base = apply_overrides(get_preset("tiny"), {"train.max_steps": 4, "train.deterministic": True})
    for setting in ("false", "true"):
        pretrain(apply_overrides(base, {"train.compile": setting}), tmp_path / setting, progress=False)
    records = json.loads((tmp_path / "true" / "environment.json").read_text())[-1]["compile"]
    assert [(r["part"], r["compile"], r["by"]) for r in records] == [
        ("networks", True, "train.compile"),
        ("views", True, "train.compile"),
    ]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # graphs were captured, not skipped
    eager, compiled = _losses(tmp_path / "false"), _losses(tmp_path / "true")
    assert len(eager) == 4 and compiled == pytest.approx(eager, abs=1e-5)


# --- the views: the fused function is the eager pipeline up to float rounding ---


@settings(max_examples=25, deadline=None)
@given(
    preset=st.sampled_from(sorted(PRESETS)), channels=st.sampled_from([1, 3]), size=st.integers(8, 40),
    n=st.integers(1, 9), seed=st.integers(0, 2**16), uint8=st.booleans(), crop=st.booleans(),
)  # fmt: skip
def test_the_fused_views_are_the_eager_views_up_to_float_rounding(preset, channels, size, n, seed, uint8, crop):
    shape = (n, channels, size + 7 if crop else size, size + 3 if crop else size)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) if uint8 else torch.rand(shape, generator=g)
    eager = TwoViews(preset, size, [0.4] * channels, [0.3] * channels)
    fused_views = TwoViews(preset, size, [0.4] * channels, [0.3] * channels)
    fused_views.compile(lambda function: function)  # fused.view run eagerly: a compiler only reorders its arithmetic
    expected = eager(images, torch.Generator().manual_seed(seed), crop)
    got = fused_views(images, torch.Generator().manual_seed(seed), crop)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, atol=5e-5, rtol=0)  # in normalised units (std 0.3): 1.5e-5 of [0, 1]


def test_the_views_part_into_power_of_two_parts_on_a_cpu():
    from byol.augment import pipeline

    assert [pipeline._part_size(3 * s * s) for s in (32, 96, 224)] == [256, 32, 4]
    assert pipeline._part_size(3 * 4096 * 4096) == 1


# --- real compiles (slow): the same views, the same run, resumes, torchrun, a damaged cache ---


@pytest.fixture
def compile_cache(tmp_path_factory, monkeypatch):
    """One inductor cache for the slow tests of a session (their second compiles hit it), not the user's."""
    cache = tmp_path_factory.getbasetemp() / "inductor-cache"
    monkeypatch.setenv(compiling.CACHE_ENV, str(cache))
    return cache


@pytest.mark.slow
@pytest.mark.parametrize("channels", [3, 1])
def test_compiled_views_are_the_eager_views_within_float_rounding(compile_cache, channels):
    for preset in ("byol", "remove-blur"):
        torch._dynamo.reset()
        images = torch.randint(0, 256, (8, channels, 20, 20), dtype=torch.uint8)
        eager = TwoViews(preset, 16, [0.5] * channels, [0.25] * channels)
        compiled = TwoViews(preset, 16, [0.5] * channels, [0.25] * channels)
        compiled.compile(lambda function: compiling.CompiledOrEager(function, "views"))
        for seed in range(3):
            expected = eager(images, torch.Generator().manual_seed(seed))
            got = compiled(images, torch.Generator().manual_seed(seed))
            for a, b in zip(expected, got, strict=True):
                torch.testing.assert_close(b, a, atol=5e-5, rtol=0)
        assert not compiled.t.compiled.failed and not compiled.t_prime.compiled.failed


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["byol_loss"] for r in records if "byol_loss" in r]


CURVE_STEPS = 50


@pytest.mark.slow
def test_a_compiled_run_has_the_eager_loss_curve_and_their_checkpoints_resume_into_each_other(compile_cache, tmp_path):
    """50 steps of tiny, compiled and eager: the same first steps to float rounding, then the same curve. Rounding
    differences grow as any two runs' do (chaotically), so the curve is compared by its 10-step means. On an AMX CPU
    compiled and eager differed by 1e-6, 1e-6, 1.4e-4 and 5.2e-3 at steps 0-3, and two eager runs that differ only in
    their thread count (the order of their sums) by 0, 0, 1.2e-4 and 1.7e-3 (6.5e-3 at step 4); on AVX2 compiled and
    eager agreed to 2e-5 for 4 steps."""
    base = apply_overrides(get_preset("tiny"), {"train.max_steps": CURVE_STEPS, "train.checkpoint_every": 25})
    runs = {}
    for setting in ("false", "true"):
        runs[setting] = tmp_path / setting
        pretrain(apply_overrides(base, {"train.compile": setting}), runs[setting], progress=False)
    eager, compiled = _losses(runs["false"]), _losses(runs["true"])
    assert len(eager) == len(compiled) == CURVE_STEPS
    assert max(abs(a - b) for a, b in zip(eager[:2], compiled[:2], strict=True)) < 1e-4  # the first update
    assert abs(eager[2] - compiled[2]) < 1e-3
    windows = [(sum(eager[i : i + 10]) - sum(compiled[i : i + 10])) / 10 for i in range(0, CURVE_STEPS, 10)]
    assert max(map(abs, windows)) < 0.1, windows  # measured at most 0.032 (AVX2), 0.049 (AMX)
    # a compiled run's checkpoint resumes eager and an eager one compiled (`byol pretrain --resume --train.compile`)
    real_step = train_module.train_step

    def stop_after_25(state, *args, **kwargs):
        if state.step == 25:  # the checkpoint of step 25 is written: stop there, as a kill would
            raise KeyboardInterrupt
        return real_step(state, *args, **kwargs)

    for source, setting in (("true", "false"), ("false", "true")):
        run = tmp_path / f"{source}-then-{setting}"
        with pytest.MonkeyPatch.context() as m:
            m.setattr(train_module, "train_step", stop_after_25)
            with pytest.raises(KeyboardInterrupt):
                pretrain(apply_overrides(base, {"train.compile": source}), run, progress=False)
        resume(run, progress=False, compile=setting)
        resumed = _losses(run)
        assert len(resumed) == CURVE_STEPS and resumed[:25] == _losses(runs[source])[:25]
        tail = [(sum(resumed[i : i + 10]) - sum(eager[i : i + 10])) / 10 for i in range(30, CURVE_STEPS, 10)]
        assert max(map(abs, tail)) < 0.1, tail
        assert json.loads((run / "config.json").read_text())["train"]["compile"] == setting


RUN = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet", "--train.checkpoint_every", "1",
       "--train.deterministic", "true", "--train.compile", "true", "--epochs", "1"]  # fmt: skip


@pytest.mark.slow
def test_a_compiled_run_killed_and_resumed_is_the_uninterrupted_compiled_run(compile_cache, tmp_path):
    reference, run, stderr = run_killed_and_resumed(RUN, tmp_path, kill_at_step=5)
    assert "resuming" in stderr and "compile networks: on (train.compile)" in stderr
    ref, got = (load_checkpoint(latest_checkpoint(r))["state"] for r in (reference, run))
    assert ref["step"] == 16
    assert_same_networks(ref, got)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes_runs_compiled(compile_cache, tmp_path):
    runs = {}
    for setting in ("false", "true"):
        runs[setting] = tmp_path / setting
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
            "-m", "byol", "pretrain", "--preset", "tiny", "--quiet", "--train.max_steps", "8", "--train.compile",
            setting, "--run-dir", str(runs[setting]), "--train.precision", "fp32",  # the same on every CPU (auto:
        ]  # fmt: skip  # bf16 on AVX512_BF16 ones, whose rounding is far coarser)
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        if setting == "true":
            assert "compile networks: on (train.compile)" in done.stderr and "failed" not in done.stderr
    eager, compiled = _losses(runs["false"]), _losses(runs["true"])
    assert len(eager) == len(compiled) == 8
    # step 1's loss follows step 0's all-reduced update: a compiled graph that lost the gradient sync or the BN
    # statistics differs there by far more than rounding; later steps drift apart as any two runs' do (AVX512: 0.0015
    # at step 3)
    assert max(abs(a - b) for a, b in zip(eager[:2], compiled[:2], strict=True)) < 1e-4, (eager, compiled)
    assert abs(sum(eager) - sum(compiled)) / 8 < 0.01, (eager, compiled)
    assert json.loads((runs["true"] / "environment.json").read_text())[-1]["world_size"] == 2


# Compiles the views of 4 seeded images in a process of its own and saves them: a cache is damaged between runs,
# never under a process that has its compiled libraries loaded.
_COMPILED_VIEWS = """
import logging, sys, torch
from byol import compiling
from byol.augment import TwoViews
logging.basicConfig(level=logging.WARNING)
views = TwoViews("remove-blur", 16, [0.5] * 3, [0.25] * 3)
views.compile(lambda function: compiling.CompiledOrEager(function, "views"))
images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
out = views(images, torch.Generator().manual_seed(0))
assert not views.t.compiled.failed
torch.save(out, sys.argv[1])
"""


@pytest.mark.slow
def test_a_damaged_cache_is_compiled_again_without_it(tmp_path):
    env = {**os.environ, compiling.CACHE_ENV: str(tmp_path / "cache")}

    def compiled_views(name):
        done = subprocess.run([sys.executable, "-c", _COMPILED_VIEWS, str(tmp_path / name)], env=env,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return torch.load(tmp_path / name), done.stderr

    first, _ = compiled_views("first.pt")
    damaged = 0
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage" * 3)
            damaged += 1
    assert damaged
    again, stderr = compiled_views("again.pt")
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(b, a, atol=5e-5, rtol=0)  # compiled again, not eager
    assert "continuing eager" not in stderr, stderr


def test_decisions_are_plain_data():
    d = Decision("views", True, "rule", 10, 0.1, 0.5, 1.0, "prior")
    assert dataclasses.asdict(d)["part"] == "views" and d.saving_s == pytest.approx(0.5)


def test_a_resume_may_change_train_compile_and_nothing_else(finished_run, tmp_path, monkeypatch):
    import shutil

    from byol.cli import main

    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert main(["pretrain", "--run-dir", str(run), "--resume", "--train.compile", "false"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["compile"] == "false"
    assert main(["pretrain", "--run-dir", str(run), "--resume"]) == 0  # config.json's compile differs: a speed switch
    refused = (["--train.compile", "maybe"], ["--train.seed", "3"], ["--train.compile", "true", "--train.seed", "3"])
    for flags in refused:
        assert main(["pretrain", "--run-dir", str(run), "--resume", *flags]) == 2
