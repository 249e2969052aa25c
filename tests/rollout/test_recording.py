"""Rollout recording: temper's compressed record and slime's file, both read back into equal Samples."""

from __future__ import annotations

import gzip
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from temper.rollout.recording import RolloutRecorder, load_recording, recording_template
from temper.types import Sample


def samples() -> list[Sample]:
    plain = Sample(group_index=0, index=0, prompt="2+2?", tokens=[5, 6, 7, 8], response="4", response_length=2,
                   label="4", reward=1.0, rollout_log_probs=[-0.25, -1.5], status=Sample.Status.COMPLETED,
                   weight_versions=["3"], metadata={"sampling_seed": 2**62 + 1})  # fmt: skip
    tool = Sample(group_index=0, index=1, prompt=[{"role": "user", "content": "hi"}], tokens=[5, 9, 10, 11],
                  response_length=3, reward={"acc": 0.0, "len": 3}, loss_mask=[1, 0, 1],
                  rollout_log_probs=[-0.1, 0.0, -2.0 / 3.0], status=Sample.Status.TRUNCATED,
                  weight_versions=["3", "4"], remove_sample=True, train_metadata={"turns": 2})  # fmt: skip
    bare = Sample(group_index=1, index=2, tokens=[1], status=Sample.Status.ABORTED)  # no log-probs, no mask
    return [plain, tool, bare]


@pytest.mark.parametrize("name", ["{rollout_id:06d}.pkl.gz", "rollout_{rollout_id}.pt"])
def test_round_trip_gives_equal_samples(tmp_path, name):
    template = str(tmp_path / "rec" / name)
    recorder = RolloutRecorder(template, rollout_seed=7)
    original = samples()
    recorder.record(3, original)
    recorder.close()
    assert load_recording(template, 3) == samples()  # every field, the float64 log-prob -2/3 included


def test_the_record_is_compressed_numpy_columns_readable_without_temper(tmp_path):
    template = str(tmp_path / "{rollout_id}.pkl.gz")
    recorder = RolloutRecorder(template, rollout_seed=7)
    recorder.record(0, samples()[:1])
    recorder.close()
    with gzip.open(tmp_path / "0.pkl.gz", "rb") as f:
        record = pickle.load(f)
    assert record["format"] == "temper-rollout-record/1" and record["rollout_seed"] == 7
    assert record["tokens"].dtype == np.int32 and record["tokens"].tolist() == [5, 6, 7, 8]
    assert record["log_probs"].dtype == np.float32  # -0.25 and -1.5 fit float32 exactly
    assert record["samples"][0]["metadata"]["sampling_seed"] == 2**62 + 1
    assert record["samples"][0]["weight_versions"] == ["3"] and "tokens" not in record["samples"][0]


def test_samples_changed_after_record_do_not_change_the_recording(tmp_path):
    template = str(tmp_path / "{rollout_id}.pkl.gz")
    recorder = RolloutRecorder(template)
    live = samples()
    recorder.record(0, live)
    live[0].tokens.append(99)
    live[0].metadata["sampling_seed"] = 0
    live[1].reward["acc"] = 1.0
    recorder.close()
    assert load_recording(template, 0) == samples()


def test_a_run_folder_replays_its_default_recording(tmp_path):
    args = SimpleNamespace(run_dir=str(tmp_path / "run"), save_debug_rollout_data=None, load_debug_rollout_data=None)
    template = recording_template(args)
    assert template == str(tmp_path / "run" / "rollouts" / "{rollout_id:06d}.pkl.gz")
    recorder = RolloutRecorder(template)
    recorder.record(12, samples())
    recorder.close()
    assert (tmp_path / "run" / "rollouts" / "000012.pkl.gz").is_file()
    assert load_recording(str(tmp_path / "run"), 12) == samples()
    with pytest.raises(FileNotFoundError, match="no saved rollout 13"):
        load_recording(str(tmp_path / "run"), 13)


def test_where_the_recording_goes():
    base = dict(run_dir="r", save_debug_rollout_data=None, load_debug_rollout_data=None)
    assert recording_template(SimpleNamespace(**base, disable_rollout_recording=True)) is None
    assert recording_template(SimpleNamespace(**base | {"save_debug_rollout_data": "d/{rollout_id}.pt"})) == "d/{rollout_id}.pt"
    assert recording_template(SimpleNamespace(**base | {"load_debug_rollout_data": "r"})) is None  # a replay
    assert recording_template(SimpleNamespace(**base | {"run_dir": None})) is None


def test_slime_files_load(tmp_path):
    """A file as slime's save_debug_rollout_data writes it."""
    torch.save({"rollout_id": 0, "samples": [s.to_dict() for s in samples()]}, tmp_path / "0.pt")
    assert load_recording(str(tmp_path / "{rollout_id}.pt"), 0) == samples()


def test_a_failed_write_is_raised_by_flush(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    recorder = RolloutRecorder(str(tmp_path / "file" / "{rollout_id}.pkl.gz"))
    recorder.record(0, samples())
    with pytest.raises(RuntimeError, match="rollout recording: .*--disable-rollout-recording"):
        recorder.flush()
    recorder.record(1, samples())  # its write fails too, after this returned
    with pytest.raises(RuntimeError, match="rollout recording"):
        recorder.flush()
    recorder.close()
