"""Bad checkpoints: a --hf-checkpoint folder that is missing, incomplete, cut short or whose config.json
is another model's (refused before Ray by the driver's checks); a --load that holds no checkpoint (said in
the run's plan), a broken tracker file (refused before Ray); a --load checkpoint of another model, cut
short or without its metadata (refused by the train worker when it loads, naming the folder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bad_input_helpers import BASE

from temper.cluster.driver import finished
from temper.cluster.run_plan import describe_run
from temper.command_line import parse_config
from temper.config import ConfigError
from temper.testing import tiny_model_dir


def _config(folder: Path, key: str, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    config[key] = change(config[key])
    (folder / "config.json").write_text(json.dumps(config))


def _cut(file: Path, keep: int | None = None) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2 if keep is None else keep])


def _missing_shard(folder: Path) -> None:
    index = {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


# (what to do to a copy of the tiny checkpoint -> the --hf-checkpoint value, parts of the message; {m}: the copy)
HF_CASES = [
    pytest.param(lambda m: str(m / "nowhere"),
                 ["--hf-checkpoint {m}/nowhere: no such folder (temper reads models from disk, never from the Hub)"],
                 id="ckpt-hf-missing-folder"),
    pytest.param(lambda m: "Qwen/Qwen3-0.6B",
                 ["--hf-checkpoint Qwen/Qwen3-0.6B: no such folder", "point it at a Hugging Face model folder"],
                 id="ckpt-hf-hub-id"),
    pytest.param(lambda m: str(m / "config.json"),
                 ["config.json: is a file; point it at the Hugging Face model folder"], id="ckpt-hf-is-a-file"),
    pytest.param(lambda m: str(m.parent), ["no config.json there (expected a Hugging Face model folder)"],
                 id="ckpt-hf-no-config"),
    pytest.param(lambda m: (m / "model.safetensors").unlink() or str(m),
                 ["--hf-checkpoint {m}: no *.safetensors weights; copy the complete model folder again"],
                 id="ckpt-hf-no-weights"),
    pytest.param(lambda m: _cut(m / "model.safetensors") or str(m),
                 ["--hf-checkpoint {m}/model.safetensors: truncated, ", "bytes (an interrupted copy or download?); "
                  "copy it again"], id="ckpt-hf-truncated-weights"),
    pytest.param(lambda m: _cut(m / "model.safetensors", keep=100) or str(m),
                 ["{m}/model.safetensors: not a safetensors file, or cut short inside its header (100 bytes)"],
                 id="ckpt-hf-cut-inside-header"),
    pytest.param(lambda m: _missing_shard(m) or str(m),
                 ["model-00002-of-00002.safetensors (named in model.safetensors.index.json) missing"],
                 id="ckpt-hf-missing-shard"),
    pytest.param(lambda m: _config(m, "hidden_size", lambda v: 2 * v) or str(m),
                 ["--hf-checkpoint {m}: the weights disagree with config.json: embed_tokens [1024, 128] (config: "
                  "[1024, 256]); the config.json belongs to another model"], id="ckpt-hf-config-of-another-model"),
    pytest.param(lambda m: _config(m, "num_hidden_layers", lambda v: v + 1) or str(m),
                 ["the weights disagree with config.json: 2 layers (config: num_hidden_layers 3)"],
                 id="ckpt-hf-config-more-layers"),
]


@pytest.mark.parametrize("damage, parts", HF_CASES)
def test_each_hf_checkpoint_case(damage, parts, model, refused, tmp_path):
    copy = Path(shutil.copytree(model, tmp_path / "model"))
    refused([*BASE, "--hf-checkpoint", damage(copy)], *(p.format(m=copy) for p in parts))


# -- --load before Ray: the plan and the tracker file ---------------------------------------------------


def _plan_warning(model: str, load: str) -> str:
    cfg = parse_config([*BASE, "--hf-checkpoint", model, "--load", load])
    (warning,) = [x for x in describe_run(cfg, "train.py", None) if x.startswith("warning: --load")]
    return warning


def test_ckpt_load_missing_folder(model, tmp_path):
    """slime's first run has --load = --save, an empty folder: a fresh start, said in the plan's warnings,
    so that a mistyped --load is seen."""
    warning = _plan_warning(model, str(tmp_path / "ckpt"))
    assert warning == (f"warning: --load {tmp_path}/ckpt holds no checkpoint (no such folder): the run starts from "
                       f"--hf-checkpoint {model}, as a first run with --load = --save does; check the path if you "
                       f"meant to resume")


def test_ckpt_load_names_a_hugging_face_folder(model):
    assert f"--load {model} holds no checkpoint (it is a Hugging Face model folder; pass that as --hf-checkpoint)" \
        in _plan_warning(model, model)


def test_ckpt_load_bad_tracker_file(model, tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("three\n")
    with pytest.raises(ConfigError, match="latest_checkpointed_iteration.txt: expected a rollout id \\(an integer\\), "
                                          "found 'three'; rewrite it with the last saved rollout id or remove it"):
        finished(parse_config([*BASE, "--hf-checkpoint", model, "--load", str(tmp_path)]))


# -- --load in the train worker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(single_rank_group, tmp_path_factory) -> Path:
    """A --save root holding the tiny Qwen3 actor's checkpoint of rollout 0."""
    from temper.train import Actor

    root = tmp_path_factory.mktemp("saved")
    Actor(parse_config([*BASE, "--hf-checkpoint", str(tiny_model_dir("qwen3")), "--save", str(root)])).save(0)
    return root


def _load(hf_checkpoint, load: Path):
    from temper.train import Actor

    return Actor(parse_config([*BASE, "--hf-checkpoint", str(hf_checkpoint), "--load", str(load)])).load()


def _copy(saved: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = Path(shutil.copytree(saved, tmp_path / "ckpt"))
    return root, root / "iter_0000000" / "actor" / "model"


def test_ckpt_load_other_architecture(saved, said):
    """A Qwen3 checkpoint into a Llama of the same sizes: DCP alone would load it and drop q_norm/k_norm."""
    with pytest.raises(ValueError) as caught:
        _load(tiny_model_dir("llama"), saved)
    said(caught.value, f"{saved}/iter_0000000/actor/model: this checkpoint is of another model than --hf-checkpoint "
                       f"(4 differences: unexpected model.layers.0.self_attn.k_norm.weight",
         "pass the --hf-checkpoint it was trained from, or another --load")


def test_ckpt_load_fewer_layers(saved, said):
    with pytest.raises(ValueError) as caught:
        _load(tiny_model_dir("qwen3", num_layers=3), saved)
    said(caught.value, "this checkpoint is of another model than --hf-checkpoint (11 differences: missing "
                       "model.layers.2.input_layernorm.weight", "; and 7 more)")


def test_ckpt_load_truncated_shard(saved, model, said, tmp_path):
    root, folder = _copy(saved, tmp_path)
    for shard in folder.glob("*.distcp"):
        _cut(shard)
    with pytest.raises(ValueError) as caught:
        _load(model, root)
    said(caught.value, f"{folder}: its shards cannot be read (", "the checkpoint is truncated or corrupt: load an "
                       "earlier iter_* folder, or drop --load to start from --hf-checkpoint")


def test_ckpt_load_without_metadata(saved, model, said, tmp_path):
    root, folder = _copy(saved, tmp_path)
    (folder / ".metadata").unlink()
    with pytest.raises(ValueError) as caught:
        _load(model, root)
    said(caught.value, f"{folder}: no readable checkpoint metadata (", "the checkpoint is incomplete")


def test_ckpt_load_tracker_names_a_missing_rollout(model, tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7\n")
    with pytest.raises(FileNotFoundError, match="latest_checkpointed_iteration.txt names rollout 7 but "
                                                f"{tmp_path}/iter_0000007 holds no actor checkpoint"):
        _load(model, tmp_path)
