"""Experiment trackers beside metrics.jsonl: MLflow and Weights & Biases (``train.loggers mlflow,wandb``).

Each gets what metrics.jsonl gets, under the same names and steps (every key of a record but ``step`` is a
metric at that record's ``step``), the resolved config as parameters (dotted keys, ``optim.base_lr``), and, as
artifacts, the run's config.json, environment.json and metrics.jsonl when the run ends, then the report and the
exports that `byol report` and `byol export` make of the run later. TensorBoard stays its own switch
(``train.tensorboard``): it writes files, where these two talk to a tracking service.

Where they write is theirs to say: MLflow's ``MLFLOW_TRACKING_URI`` (unset: ``<run>/mlruns``, a file store inside
the run, so nothing lands outside it unasked; MLflow 3 wants ``MLFLOW_ALLOW_FILE_STORE=true`` for a file store,
which is set for that one) and ``MLFLOW_EXPERIMENT_NAME`` (unset: "byol"); W&B's own settings
(``WANDB_MODE=offline`` for no network, ``WANDB_PROJECT``; unset project: "byol"), with its local files in
``<run>/wandb``. The tracker's run id is kept in ``<run>/trackers.json``, so a resumed run, a report and an export
add to the same tracker run. A tracker whose package is missing is named in one line and the run goes on, as for
TensorBoard; a tracker that fails to start or to log stops nothing either: it is named once and dropped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from byol.errors import first_line
from byol.extras import available
from byol.files import write_json

log = logging.getLogger(__name__)

TRACKERS = ("mlflow", "wandb")
TRACKERS_FILE = "trackers.json"  # in the run directory: each tracker's run id, for a resume, a report, an export
MLRUNS_DIR, WANDB_DIR = "mlruns", "wandb"  # what the trackers may write inside a run directory
PROJECT = "byol"


def names(setting: str) -> list[str]:
    """``train.loggers`` as a list: "mlflow,wandb" → ["mlflow", "wandb"]; "" → []."""
    return [name.strip() for name in setting.split(",") if name.strip()]


def _recorded(run_dir: Path) -> dict[str, Any]:
    """trackers.json of ``run_dir``: {tracker: {"run_id": ...}}; anything unreadable counts as nothing recorded."""
    try:
        recorded = json.loads((run_dir / TRACKERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in recorded.items() if isinstance(v, dict)} if isinstance(recorded, dict) else {}


class MlflowTracker:
    """An MLflow run through MlflowClient (no global active run): metrics by step, parameters, artifacts."""

    name = "mlflow"

    def __init__(self, run_dir: Path, run_id: str | None, params: Mapping[str, Any] | None) -> None:
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow 3 keeps its file store only on request: this one is the run's own, asked for here
            uri = (run_dir / MLRUNS_DIR).resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(uri)
        if run_id is None:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        self.run_id = run_id
        if params:
            from mlflow.entities import Param

            items = [Param(key, str(value)[:6000]) for key, value in params.items()]
            for start in range(0, len(items), 100):  # the tracking API's batch limit
                self.client.log_batch(run_id, params=items[start : start + 100])

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def artifacts(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)

    def record(self) -> dict[str, str]:
        return {"run_id": self.run_id, "tracking_uri": self.client.tracking_uri}


class WandbTracker:
    """A W&B run (``wandb.init`` with this run's id, so a resume continues it): metrics by step, config, files."""

    name = "wandb"

    def __init__(self, run_dir: Path, run_id: str | None, params: Mapping[str, Any] | None) -> None:
        import wandb

        (run_dir / WANDB_DIR).mkdir(exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT, name=run_dir.name, id=run_id, resume="allow",
            dir=str(run_dir), config=dict(params or {}), settings=wandb.Settings(silent=True, console="off"),
            reinit="create_new",
        )  # fmt: skip
        self.run_id = self.run.id

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def artifacts(self, paths: Sequence[Path]) -> None:
        import wandb

        artifact = wandb.Artifact(f"{self.run.id}-files", type="run-files")
        for path in paths:
            if path.is_dir():
                artifact.add_dir(str(path), name=path.name)
            else:
                artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()

    def record(self) -> dict[str, str]:
        return {"run_id": self.run_id}


CLASSES: dict[str, type[MlflowTracker] | type[WandbTracker]] = {"mlflow": MlflowTracker, "wandb": WandbTracker}


class Trackers:
    """The trackers a run (or a later command on it) logs to; each failure is named once and drops that tracker."""

    def __init__(self, run_dir: Path, wanted: Sequence[str], params: Mapping[str, Any] | None = None) -> None:
        """``params``: the resolved config, flattened, for a run that starts afresh (None: a resume, or a later
        command, which continue the tracker runs recorded in ``run_dir``)."""
        self.run_dir, self.open = run_dir, list[MlflowTracker | WandbTracker]()
        recorded = _recorded(run_dir)
        for name in wanted:
            if not available(name):  # the module is the tracker's name
                log.info("no %s logging: the %s package is not installed (pip install 'byol[%s]')", name, name, name)
                continue
            run_id = recorded.get(name, {}).get("run_id") if params is None else None
            try:
                self.open.append(CLASSES[name](run_dir, run_id if isinstance(run_id, str) else None, params))
            except Exception as e:  # a tracker is a convenience: its server or its files never stop a run
                log.warning("%s logging is off: it could not start (%s)", name, first_line(e))
        if self.open and params is not None:
            write_json(run_dir / TRACKERS_FILE, {**recorded, **{t.name: t.record() for t in self.open}})

    def _each(self, what: str, call: Any) -> None:
        for tracker in list(self.open):
            try:
                call(tracker)
            except Exception as e:  # named once, then that tracker is left out
                log.warning("%s logging stopped: %s failed (%s)", tracker.name, what, first_line(e))
                self.open.remove(tracker)

    def metrics(self, record: Mapping[str, Any]) -> None:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        self._each("logging metrics", lambda t: t.metrics(values, int(record["step"])))

    def artifacts(self, paths: Sequence[Path]) -> None:
        present = [p for p in paths if p.exists()]
        if present:
            self._each("uploading files", lambda t: t.artifacts(present))

    def close(self) -> None:
        self._each("closing", lambda t: t.close())
        self.open.clear()


def recorded_trackers(run_dir: Path) -> list[str]:
    """The trackers a run logged to (its trackers.json), for the commands that add files to them later."""
    return [name for name in TRACKERS if name in _recorded(run_dir)]


def add_artifacts(run_dir: Path, paths: Sequence[Path]) -> None:
    """Adds a report or an export of ``run_dir`` to the tracker runs that the run logged to, if any."""
    wanted = recorded_trackers(run_dir)
    if wanted:
        trackers = Trackers(run_dir, wanted)
        trackers.artifacts(paths)
        trackers.close()
