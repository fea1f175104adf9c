"""Records -> MLflow runs, through MlflowClient (no active-run state, so nothing leaks between records).

One MLflow run per record in one experiment: params = the flattened resolved config, metrics per logged step
(step = update number; timestamp = the record's start plus the series' `time_s`), the summary at the last update,
tags `status`, `signature`, `run_folder` (and `error` for a failed run). Run status: complete -> FINISHED,
failed and diverged -> FAILED, pruned -> KILLED.

The default store is `sqlite:///RESULTS_DIR/mlflow.db`: MLflow 3 refuses its old file store (`./mlruns`)
unless MLFLOW_ALLOW_FILE_STORE is set, and SQLite is its own default. A rerun finds each record's MLflow run by
(`run_folder`, `signature`): kept when `export_sha256` (a hash of run.json and the export options) is
unchanged, else deleted and logged again (a failed point that a rerun completed), so the experiment never holds
two runs of one record.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from mlflow.entities import Metric, Param, ViewType
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from analysis._export_records import ExportError, Record

STORE_FILE = "mlflow.db"
ARTIFACTS = "mlartifacts"  # nothing is logged there; set so MLflow makes no ./mlruns in the caller's folder
_RUN_STATUS = {"complete": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "pruned": "KILLED"}
KEY_TAGS = ("run_folder", "signature")


def default_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / STORE_FILE}"


def log_mlflow(
    records: list[Record], root: Path, tracking_uri: str | None = None, experiment: str | None = None
) -> tuple[dict[str, int], str, str]:
    """Log every record; returns the counts (logged, replaced, unchanged), the tracking URI and experiment."""
    for name in ("mlflow", "alembic"):  # their INFO lines (creating tables, migrations) are noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri or default_uri(root)
    name = experiment or root.name
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
    except Exception as exc:  # an unknown scheme, an unreachable server, a store it cannot open
        raise ExportError(f"--tracking-uri {uri}: {_first_line(exc)}") from exc
    if found is None:
        exp_id = client.create_experiment(name, artifact_location=(root / ARTIFACTS).as_uri())
    elif found.lifecycle_stage != "active":
        raise ExportError(f"--experiment: '{name}' is deleted in {uri} (restore it, or choose another name)")
    else:
        exp_id = found.experiment_id
    existing = _existing(client, exp_id)
    counts = {"logged": 0, "replaced": 0, "unchanged": 0}
    for rec in records:
        old = existing.get((rec.run_id, rec.signature), [])
        if len(old) == 1 and old[0][1] == rec.digest:
            counts["unchanged"] += 1
            continue
        for run_id, _ in old:
            client.delete_run(run_id)
        _log_one(client, exp_id, rec)
        counts["replaced" if old else "logged"] += 1
    return counts, uri, name


def _existing(client: MlflowClient, exp_id: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Active runs of the experiment by (run_folder, signature) -> [(MLflow run id, record digest)]."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if all(k in tags for k in KEY_TAGS):
                key = (tags["run_folder"], tags["signature"])
                out.setdefault(key, []).append((run.info.run_id, tags.get("export_sha256", "")))
        token = page.token
        if not token:
            return out


def _log_one(client: MlflowClient, exp_id: str, rec: Record) -> None:
    start_ms = int(rec.start_time * 1000)
    tags = {
        "status": rec.status,
        "signature": rec.signature,
        "run_folder": rec.run_id,
        "export_sha256": rec.digest,
        "mlflow.source.name": str(rec.folder),
    }
    if rec.error:
        tags["error"] = str(rec.error)[:MAX_TAG_VAL_LENGTH]
    run = client.create_run(exp_id, start_time=start_ms, tags=tags, run_name=rec.run_id)
    run_id = run.info.run_id
    params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in sorted(rec.config.items())]
    metrics = []
    for prefix, df, cols in rec.scalars():
        times = df["time_s"].to_numpy() if "time_s" in df else None
        steps = df["step"].to_numpy()
        for col in cols:
            for i, value in enumerate(df[col].to_numpy(dtype=float)):
                if math.isfinite(value):
                    offset = times[i] if times is not None and math.isfinite(times[i]) else 0.0
                    metrics.append(Metric(f"{prefix}/{col}", value, start_ms + int(offset * 1000), int(steps[i])))
    end_ms = int(rec.end_time * 1000)
    metrics.extend(Metric(f"summary/{k}", v, end_ms, rec.last_step) for k, v in rec.summary.items())
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_terminated(run_id, status=_RUN_STATUS.get(rec.status, "FINISHED"), end_time=end_ms)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
