"""Records -> TensorBoard event files, with tensorboard's own writer and protos (no TensorFlow, no torch).

OUT/<run folder>/events.out.tfevents.* per record: one event per logged step holding that step's scalars as
`simple_value` (what TensorBoard's scalar dashboard and EventAccumulator.Scalars read), and the hparams plugin's
session start (the flattened config) and end (complete -> success; failed, diverged -> failure) so the HParams
dashboard tables runs by config. Wall times are the record's: its start plus the series' `time_s`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from analysis._export_records import Record

EVENT_GLOB = "events.out.tfevents.*"
_SESSION_STATUS = {
    "complete": api_pb2.STATUS_SUCCESS,
    "failed": api_pb2.STATUS_FAILURE,
    "diverged": api_pb2.STATUS_FAILURE,
}


def write_tensorboard(records: list[Record], out: Path) -> None:
    for rec in records:
        logdir = out / rec.run_id
        logdir.mkdir(parents=True, exist_ok=True)
        for old in logdir.glob(EVENT_GLOB):  # a rerun replaces the run's events: TensorBoard would show both
            old.unlink()
        writer = EventFileWriter(str(logdir), max_queue_size=1024, flush_secs=3600)
        try:
            writer.add_event(_hparams_event(rec))
            for step, wall, values in _steps(rec):
                summary = Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values])
                writer.add_event(Event(wall_time=wall, step=step, summary=summary))
            writer.add_event(_session_end_event(rec))
        finally:
            writer.close()


def _steps(rec: Record) -> list[tuple[int, float, list[tuple[str, float]]]]:
    """(step, wall time, [(tag, value)]) per logged step, every series merged; NaN and inf left out."""
    by_step: dict[int, tuple[float, list[tuple[str, float]]]] = {}
    for prefix, df, cols in rec.scalars():
        times = df["time_s"].to_numpy(dtype=float) if "time_s" in df else np.zeros(len(df))
        values = {f"{prefix}/{c}": df[c].to_numpy(dtype=float) for c in cols}
        for i, step in enumerate(df["step"].to_numpy()):
            entry = by_step.setdefault(int(step), (rec.start_time + _or0(times[i]), []))
            entry[1].extend((tag, float(v[i])) for tag, v in values.items() if math.isfinite(v[i]))
    _, last = by_step.setdefault(rec.last_step, (rec.end_time, []))
    last.extend((f"summary/{k}", v) for k, v in rec.summary.items())
    return [(step, *by_step[step]) for step in sorted(by_step)]


def _or0(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0


def _hparams_event(rec: Record) -> Event:
    start = plugin_data_pb2.SessionStartInfo(group_name=rec.run_id, start_time_secs=rec.start_time)
    for key, value in sorted(rec.config.items()):
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[key].number_value = value
        elif isinstance(value, str):
            start.hparams[key].string_value = value
        # None (an unset option) has no hparam value: left out
    for key, value in (("status", rec.status), ("signature", rec.signature)):
        start.hparams[key].string_value = value
    return _plugin_event(
        metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start), rec.start_time
    )


def _session_end_event(rec: Record) -> Event:
    status = _SESSION_STATUS.get(rec.status, api_pb2.STATUS_UNKNOWN)
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=rec.end_time)
    data = plugin_data_pb2.HParamsPluginData(session_end_info=end)
    return _plugin_event(metadata.SESSION_END_INFO_TAG, data, rec.end_time)


def _plugin_event(tag: str, data: plugin_data_pb2.HParamsPluginData, wall: float) -> Event:
    value = Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return Event(wall_time=wall, step=0, summary=Summary(value=[value]))
