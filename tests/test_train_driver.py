"""The drivers end to end on CPU: Ray, engine servers, FSDP train ranks, weight sync, on the quickstart's
learnable task (reward = share of digits in the response, about 0.005 for the random tiny model).

Every run records its rollouts (by default, in <run dir>/rollouts/), so the tests read back each
sample's index and weight version. Sampling is seeded per sample (rollout seed, group, position), so runs are
reproducible; "reward rose" asserts the last step's mean reward beats the first step's by a margin.

Resume: the uninterrupted run and the resumed one must give the same per-step sample indices,
rewards and losses (all exactly equal here: same weights, same seeds); only the trainer-vs-engine
log-prob gap, which depends on how the engine batched requests, may differ (below 1e-5).
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from temper.quickstart import load_driver, prepare
from temper.rollout.recording import load_recording
from temper.testing import tiny_model_dir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster", "plots_unrasterized")]
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 32  # 4 prompts x 8 samples per rollout
RISE = 0.1  # "reward rose": last step's mean reward >= first step's + RISE
MEASURED = ("mem", "mfu")  # train/ metrics measured from the machine (memory peaks, MFU), not computed by training


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("task"))


def task_flags(task, out: Path, *extra: str, steps: int = 4, save_rollouts: bool = True) -> list[str]:
    model, prompts = task
    saved = [] if save_rollouts else ["--disable-rollout-recording"]
    return [
        "--hf-checkpoint", str(model), "--prompt-data", str(prompts), "--input-key", "prompt", "--label-key", "label",
        "--apply-chat-template", "--rollout-shuffle", "--custom-rm-path", "temper.quickstart.reward",
        "--rollout-batch-size", "4", "--n-samples-per-prompt", "8", "--rollout-max-response-len", "8",
        "--num-rollout", str(steps), "--lr", "3e-2", "--use-dynamic-batch-size", "--max-tokens-per-gpu", "4096",
        "--actor-num-gpus-per-node", "2", "--run-dir", str(out / "run"), "--check-weight-update-equal", *saved, *extra,
    ]  # fmt: skip


def saved_samples(out: Path, rollout_id: int) -> list[dict]:
    return [s.to_dict() for s in load_recording(str(out / "run"), rollout_id)]


def check_run(steps: list[dict], out: Path, *, staleness: int) -> None:
    """Sample indices, the weight version of every sample and of the engines after every sync, reward."""
    seen = []
    for step in steps:
        r = step["step"]
        samples = saved_samples(out, r)
        indices = sorted(s["index"] for s in samples)
        assert indices == list(range(SAMPLES * r, SAMPLES * (r + 1))), f"rollout {r}: samples lost or repeated"
        seen += indices
        expected = str(max(r - staleness, 0))  # version v = weights after v trained rollouts
        assert {tuple(s["weight_versions"]) for s in samples} == {(expected,)}, f"rollout {r}"
        assert step["rollout/staleness_max"] == r - int(expected)
    assert len(seen) == len(set(seen))
    synced = [s["sync/weight_version"] for s in steps if "sync/weight_version" in s]
    assert synced == [s["step"] + 1.0 for s in steps][: len(synced)] and len(synced) >= len(steps) - 1
    assert all(s["sync/checked_tensors"] > 0 for s in steps if "sync/checked_tensors" in s)
    rewards = [s["rollout/raw_reward"] for s in steps]
    assert rewards[0] <= 0.2 and rewards[-1] >= rewards[0] + RISE, f"reward did not rise: {rewards}"
    lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [s["step"] for s in steps]
    assert (out / "run" / "report.md").is_file()


@pytest.fixture(scope="module")
def sync_run(task, tmp_path_factory):
    """train.py, 2 train ranks + 2 engines on their own slots (broadcast weight sync), 4 rollouts,
    checkpoints after rollouts 1 and 3."""
    out = tmp_path_factory.mktemp("sync")
    flags = task_flags(task, out, "--rollout-num-gpus", "2", "--save", str(out / "ckpt"), "--save-interval", "2")
    return load_driver("train").main(flags), out


def test_sync_disaggregated(sync_run):
    steps, out = sync_run
    check_run(steps, out, staleness=0)
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    assert (out / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


def test_rerun_of_a_finished_run_exits_and_keeps_its_report(sync_run, task, capsys):
    """The same command again with --load on its --save: nothing trained, report and metrics untouched."""
    _, out = sync_run
    ckpt = str(out / "ckpt")
    run_files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "run").iterdir() if p.is_file()}
    flags = task_flags(task, out, "--rollout-num-gpus", "2", "--save", ckpt, "--save-interval", "2", "--load", ckpt)
    assert load_driver("train").main(flags) == []
    assert "already holds the checkpoint of rollout 3, the last of --num-rollout 4" in capsys.readouterr().out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "run").iterdir() if p.is_file()} == run_files


def test_resume_continues_exactly(sync_run, killed_and_resumed):
    """The resumed run of the test below (--load on the checkpoint root of rollout 1, written by a run identical to
    sync_run up to then) against the uninterrupted sync_run."""
    full, out = sync_run
    resumed, resumed_out = killed_and_resumed.resumed, killed_and_resumed.out
    assert [s["step"] for s in resumed] == [2, 3]
    for r, (want, got) in enumerate(zip(full[2:], resumed), start=2):
        assert [s["index"] for s in saved_samples(resumed_out, r)] == [s["index"] for s in saved_samples(out, r)]
        exact = [
            k
            for k in want
            if k.startswith(("rollout/raw", "rollout/response", "train/"))
            and not any(m in k for m in ("logprob_abs_diff", *MEASURED))
        ]
        assert {k: got[k] for k in exact} == {k: want[k] for k in exact}, f"rollout {r}"
        assert got["train/train_rollout_logprob_abs_diff"] == pytest.approx(
            want["train/train_rollout_logprob_abs_diff"], abs=1e-5
        )


def test_replaying_a_runs_recording_trains_identically(sync_run, task, tmp_path):
    """--load-debug-rollout-data RUN_DIR replays the run's default recording without engines: the same
    rollout and train metrics, step by step, and the same weights after the steps (checkpoint of rollout 1)."""
    from safetensors.torch import load_file

    from temper.train.hf_export import convert_checkpoint_to_hf

    full, out = sync_run
    assert sorted(p.name for p in (out / "run" / "rollouts").iterdir()) == [f"00000{r}.pkl.gz" for r in range(4)]
    ckpt = ["--save", str(tmp_path / "ckpt"), "--save-interval", "2"]
    flags = task_flags(task, tmp_path, "--load-debug-rollout-data", str(out / "run"), *ckpt, steps=2)
    replayed = load_driver("train").main(flags)
    assert not (tmp_path / "run" / "rollouts").exists()  # a replay records nothing
    for want, got in zip(full[:2], replayed, strict=True):
        same = [
            k for k in want
            if k.startswith(("rollout/raw", "rollout/response", "rollout/zero", "train/")) and not any(m in k for m in MEASURED)
        ]  # fmt: skip
        assert {k: got[k] for k in same} == {k: want[k] for k in same}
        assert "sync/weight_version" not in got  # no engines to sync
    model, _ = task
    weights = [
        load_file(convert_checkpoint_to_hf(ckpt / "iter_0000001", model, tmp_path / name) / "model.safetensors")
        for ckpt, name in ((out / "ckpt", "original"), (tmp_path / "ckpt", "replayed"))
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_sync_colocated(task, tmp_path):
    """2 train ranks, each sharing its slot with an engine (tensor handoff, memory released/resumed: on
    CPU the default memory plan moves both sides), each move timed apart from train and sync."""
    steps = load_driver("train").main(task_flags(task, tmp_path, "--colocate"))
    check_run(steps, tmp_path, staleness=0)
    moves = {"time/release_engine", "time/onload_train", "time/offload_train", "time/resume_engine"}
    assert all(moves | {"time/train", "time/sync"} <= set(step) for step in steps)


def test_sync_tensor_parallel_engine(task, tmp_path):
    """One engine of two tensor-parallel ranks (--rollout-num-gpus-per-engine 2: on CPU two worker
    processes, gloo), fed by the broadcast weight sync and checked tensor by tensor after each sync
    (`get_weight` gathers the shards back)."""
    flags = task_flags(task, tmp_path, "--rollout-num-gpus", "2", "--rollout-num-gpus-per-engine", "2")
    steps = load_driver("train").main(flags)
    check_run(steps, tmp_path, staleness=0)


def test_async_disaggregated(task, tmp_path):
    """train_async.py: rollout k+1 is generated (by version k) while rollout k trains. The checkpoint of
    rollout 1 holds the data source as it was after rollout 1, not after rollout 2 (generated ahead)."""
    ckpt = ["--save", str(tmp_path / "ckpt"), "--save-interval", "2"]
    steps = load_driver("train_async").main(task_flags(task, tmp_path, "--rollout-num-gpus", "2", *ckpt, steps=5))
    check_run(steps, tmp_path, staleness=1)
    state = json.loads((tmp_path / "ckpt" / "rollout" / "data_source_state_1.json").read_text())
    assert state["sample_index"] == 2 * SAMPLES and state["sample_group_index"] == 2 * 4


def test_async_colocated(task, tmp_path):
    """train_async.py keeps both sides resident: --colocate alone moves nothing."""
    steps = load_driver("train_async").main(task_flags(task, tmp_path, "--colocate", steps=5))
    check_run(steps, tmp_path, staleness=1)
    assert not any(key.startswith(("time/release", "time/onload", "time/offload")) for key in steps[-1])


def test_async_refuses_offload(task, tmp_path):
    with pytest.raises(SystemExit, match="drop --offload/--offload-train/--offload-rollout"):
        load_driver("train_async").main(task_flags(task, tmp_path, "--colocate", "--offload-train"))


def test_rollout_only_and_ppo(task, tmp_path):
    """--debug-rollout-only (engines alone: no trainer, no sync); PPO (an actor and a critic group)."""
    rollout_only = load_driver("train").main(
        task_flags(task, tmp_path / "a", "--rollout-num-gpus", "1", "--debug-rollout-only", steps=2)
    )
    assert [s["step"] for s in rollout_only] == [0, 1] and not any(k.startswith("train/") for k in rollout_only[-1])
    assert {tuple(s["weight_versions"]) for s in saved_samples(tmp_path / "a", 1)} == {("default",)}
    flags = task_flags(
        task, tmp_path / "b", "--rollout-num-gpus", "1", "--advantage-estimator", "ppo", "--critic-lr", "1e-3", steps=2
    )
    flags[flags.index("--actor-num-gpus-per-node") + 1] = "1"
    ppo = load_driver("train").main(flags)
    assert {"critic/value_loss", "train/pg_loss", "sync/weight_version"} <= set(ppo[-1])


def test_external_engine(task, tmp_path):
    """--rollout-external-engine-addrs: an engine started elsewhere (here: this process) gets the weights."""
    from temper.engine.server import ServerArgs, ServerThread

    model, _ = task
    with ServerThread(ServerArgs(model=str(model), port=0, log_level="warning")) as server:
        address = server.url.removeprefix("http://")
        flags = task_flags(
            task, tmp_path, "--rollout-external-engine-addrs", address, "--update-weight-transport", "disk", steps=2
        )
        flags[flags.index("--actor-num-gpus-per-node") + 1] = "1"
        steps = load_driver("train").main(flags)
        assert [s["sync/weight_version"] for s in steps] == [1.0, 2.0]
        assert server.state.engine.engine.weight_version == "2"


LIVE_LINE = r"  (rollout|train|sync|save|eval) \d+ s(: .*)?"


def test_every_long_phase_shows_what_it_has_done(task, tmp_path, monkeypatch, capsys):
    """Off a terminal each long phase prints a plain line every quiet period (shortened here): the rollout's and
    the evaluation's samples, the train phase's optimizer step with its micro-batches and tokens a second (from
    train rank 0, asked while it trains), the weight sync's megabytes sent and its check, the checkpoint's part."""
    import re

    from temper.observe import live

    monkeypatch.setattr(live, "QUIET_S", 0.02)
    _, prompts = task
    flags = task_flags(
        task, tmp_path, "--rollout-num-gpus", "1", "--save", str(tmp_path / "ckpt"), "--save-interval", "1",
        "--eval-interval", "1", "--eval-prompt-data", "sums", str(prompts), "--n-samples-per-eval-prompt", "1", steps=1,
    )  # fmt: skip
    flags[flags.index("--actor-num-gpus-per-node") + 1] = "1"
    flags[flags.index("--max-tokens-per-gpu") + 1] = "256"  # several micro-batches in the step
    steps = load_driver("train").main(flags)
    lines = [line for line in capsys.readouterr().out.splitlines() if re.fullmatch(LIVE_LINE, line)]
    # a line's detail after "phase ...: "; a line without one (the phase's seconds alone, e.g. "  sync 0 s") as it reads
    by_phase = {phase: [line.split(": ", 1)[1] if ": " in line else line.strip() for line in lines
                        if line.startswith(f"  {phase} ")]
                for phase in ("rollout", "train", "sync", "save", "eval")}  # fmt: skip
    assert all(by_phase.values()), by_phase
    assert any(re.fullmatch(r"\d+/32 samples, [\d.]+k? tok/s, at most \d+ s left", d) for d in by_phase["rollout"]), by_phase["rollout"]
    assert any(re.fullmatch(r"\d+/64 samples, [\d.]+k? tok/s, at most \d+ s left", d) for d in by_phase["eval"]), by_phase["eval"]
    # rank 0's stage as the driver found it; how far it had got when asked depends on timing (the counts themselves
    # are tested in tests/train/test_work_progress.py): a rate once a micro-batch is done
    train = r"step 1/1, 0/\d+ micro-batches|step 1/1, [1-9]\d*/\d+ micro-batches, [\d.]+k? tok/s"
    assert all(re.fullmatch(train, d) or re.fullmatch(r"train \d+ s", d) for d in by_phase["train"]), by_phase["train"]
    assert any(re.fullmatch(train, d) for d in by_phase["train"]), by_phase["train"]
    sync = r"weights, [\d.]+/[\d.]+ MB, [\d.]+k? MB/s|weight check"  # or the phase's seconds alone: the pause
    unsent = r"weights, 0/[\d.]+ MB"  # asked before the first byte went: no rate yet (phase_watchers.describe)
    assert all(re.fullmatch(f"{sync}|{unsent}", d) or d.startswith("sync ") for d in by_phase["sync"]), by_phase["sync"]
    assert any(re.fullmatch(sync, d) for d in by_phase["sync"]), by_phase["sync"]
    assert all(d in ("actor checkpoint",) or d.startswith("save ") for d in by_phase["save"]), by_phase["save"]
    assert {"time/save", "time/eval", "time/train", "time/sync"} <= set(steps[0])


CORRUPTED = "model.layers.0.mlp.down_proj.weight"
WEIGHTS_DIFFER = "train.py: error: preflight: the engines' weights differ from the trainer's after the first"


def run_with_corrupted_engine(task, out: Path, perturb, name: str = CORRUPTED, after_check: bool = False) -> str:
    """train.py (1 rollout) against an engine started here, which applies `perturb(tensor) -> tensor` to weight
    `name` after each real weight load (`after_check`: instead, once the weight check has read its checksums,
    as if something changed the weights later); returns the message the run stopped with."""
    from temper.engine.server import ServerArgs, ServerThread

    model, _ = task
    with ServerThread(ServerArgs(model=str(model), port=0, log_level="warning")) as server:
        engine = server.state.engine.engine
        load, checksums = engine.load_weights_from_disk, engine.weight_checksums

        def corrupt() -> None:
            engine.load_weights([(name, perturb(engine.get_weights_by_name(name).clone()))])

        def load_then_perturb(path: str) -> None:
            load(path)
            corrupt()

        def checksums_then_perturb(names):
            sums = checksums(names)
            if names:  # the comparison's call, after the sync (the first asks for the dtype only)
                corrupt()
            return sums

        if after_check:
            engine.weight_checksums = checksums_then_perturb
        else:
            engine.load_weights_from_disk = load_then_perturb
        flags = task_flags(
            task, out, "--rollout-external-engine-addrs", server.url.removeprefix("http://"),
            "--update-weight-transport", "disk", steps=1,
        )  # fmt: skip
        flags[flags.index("--actor-num-gpus-per-node") + 1] = "1"
        flags.remove("--check-weight-update-equal")  # the preflight checks the first sync without it
        with pytest.raises(SystemExit) as stopped:
            load_driver("train").main(flags)
    return str(stopped.value)


def test_preflight_stops_a_run_whose_first_weight_sync_is_corrupted(task, tmp_path):
    """One tensor perturbed on the engine: the preflight's check of the first sync stops the run, before
    any rollout, saying what differs."""
    message = run_with_corrupted_engine(task, tmp_path, lambda w: w + 0.5)
    assert message.startswith(WEIGHTS_DIFFER)
    assert f"{CORRUPTED}: checksum " in message and "every element compared in float32" in message
    assert message.endswith("--skip-preflight.")
    assert not (tmp_path / "run" / "metrics.jsonl").read_text()  # no step ran


def test_preflight_catches_one_element_changed_in_the_middle_of_a_tensor(task, tmp_path):
    """One element in the middle of the largest tensor, changed by its last bit on the engine (no first-rows probe
    would see it, nor would the log-prob gap): the checksum of every element stops the run."""
    name = "model.embed_tokens.weight"

    def nudge_middle(w):
        row, col = w.shape[0] // 2, w.shape[1] // 2
        w[row, col] = torch.nextafter(w[row, col], torch.tensor(float("inf")))
        return w

    message = run_with_corrupted_engine(task, tmp_path, nudge_middle, name)
    assert message.startswith(WEIGHTS_DIFFER) and "1 engine tensors differ from the trainer's: " in message
    assert f"{name}: checksum " in message and message.endswith("--skip-preflight.")


def test_preflight_gap_check_catches_weights_changed_after_the_check(task, tmp_path):
    """Weights perturbed on the engine after the first sync's check passed: the first step's trainer-engine
    log-prob gap stops the run instead."""
    message = run_with_corrupted_engine(task, tmp_path, lambda w: w + 0.5, after_check=True)
    assert message.startswith("train.py: error: preflight: the trainer and the engines disagree on the log-probs")
    gap = float(message.split("Found: ", 1)[1].split(",", 1)[0])
    assert gap > 0.1 and "above 0.1 (--preflight-max-logprob-diff" in message and message.endswith("--skip-preflight.")


SEED_QUICK_START = [
    "--rm-type", "deepscaler", "--num-rollout", "2", "--rollout-batch-size", "2", "--n-samples-per-prompt", "4",
    "--rollout-max-response-len", "16", "--rollout-temperature", "0.8", "--global-batch-size", "8",
    "--advantage-estimator", "grpo", "--use-kl-loss", "--kl-loss-coef", "0.00", "--kl-loss-type", "low_var_kl",
    "--entropy-coef", "0.00", "--eps-clip", "0.2", "--eps-clip-high", "0.28",
    "--optimizer", "adam", "--lr", "1e-6", "--lr-decay-style", "constant", "--weight-decay", "0.1",
    "--adam-beta1", "0.9", "--adam-beta2", "0.98",
    "--attention-dropout", "0.0", "--hidden-dropout", "0.0", "--accumulate-allreduce-grads-in-fp32",
    "--attention-softmax-in-fp32", "--attention-backend", "flash", "--recompute-granularity", "full",
    "--recompute-method", "uniform", "--recompute-num-layers", "1", "--use-dynamic-batch-size", "--max-tokens-per-gpu", "9216",
    "--eval-interval", "2", "--n-samples-per-eval-prompt", "2", "--eval-max-response-len", "16", "--eval-top-p", "0.7",
    "--save-interval", "2", "--actor-num-nodes", "1", "--actor-num-gpus-per-node", "1", "--colocate",
    "--sglang-mem-fraction-static", "0.7", "--sglang-log-level", "INFO",
]  # fmt: skip
"""slime's quick-start flags (scripts/run-qwen3-*.sh), with small batch values; see the README."""


def model_args(script: str) -> list[str]:
    command = f"source {ROOT / 'scripts' / 'models' / script} && printf '%s\\n' \"${{MODEL_ARGS[@]}}\""
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()


def test_seed_quick_start_runs_unchanged_on_cpu(task, tmp_path):
    """`source scripts/models/qwen3-tiny.sh` + the quick start's train.py flags, on the tiny checkpoint."""
    _, prompts = task
    flags = [
        *model_args("qwen3-tiny.sh"), "--hf-checkpoint", str(tiny_model_dir("qwen3")),
        "--prompt-data", str(prompts), "--input-key", "prompt", "--label-key", "label", "--apply-chat-template",
        "--rollout-shuffle", "--eval-prompt-data", "quick", f"{prompts}@[0:4]", "--eval-prompt-data", "more",
        f"{prompts}@[4:6]", "--load", str(tmp_path / "ckpt"), "--save", str(tmp_path / "ckpt"), *SEED_QUICK_START,
    ]  # fmt: skip
    steps = load_driver("train").main(flags)
    assert [s["step"] for s in steps] == [0, 1]
    for name in ("quick", "more"):  # the page's multi-task form: the flag repeated, every dataset evaluated
        assert f"eval/{name}" in steps[-1] and f"eval/{name}/response_len_mean" in steps[-1]
    assert (tmp_path / "ckpt" / "iter_0000001" / "actor").is_dir()
    assert (tmp_path / "ckpt" / "report.md").is_file()  # the run folder defaults to --save


def test_quickstart_short(tmp_path, capsys, monkeypatch, plots_unrasterized):
    """The README's main command, 3 steps: progress lines, metrics file, report (its plots drawn for real), the
    trained model kept as a Hugging Face folder that transformers loads, and how to serve it."""
    from matplotlib.figure import Figure

    from temper.quickstart import main

    monkeypatch.setattr(Figure, "savefig", plots_unrasterized)

    steps = main(["--workdir", str(tmp_path), "--num-rollout", "3"])
    printed = capsys.readouterr().out
    assert printed.startswith("temper quickstart: python train.py --hf-checkpoint")
    assert [line.split("  ")[0] for line in printed.splitlines() if line.startswith("step ")] == [
        "step 0/3",
        "step 1/3",
        "step 2/3",
    ]
    assert "temper quickstart: reward" in printed and len(steps) == 3
    started = printed.split("train.py started:\n", 1)[1].splitlines()[:2]  # what the run started with
    assert started[0].startswith("  memory plan (CPU run)")
    assert "kernels PyTorch reference; decode CUDA graphs off" in started[1] and "KV cache" in started[1]
    run = next(tmp_path.glob("run-*"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3 and (run / "summary.json").is_file()
    kept = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]  # for the report
    assert [row["step"] for row in kept] == [0] * 4 + [1] * 4 + [2] * 4
    page = (run / "report.html").read_text()
    assert all(row["response"] is not None for row in kept) and "<h2>Samples</h2>" in page and "No samples.jsonl" not in page
    minutes = f"{json.loads((run / 'summary.json').read_text())['wall_minutes']:.1f} min"
    assert f"run time {minutes} (start-up included" in printed
    assert f"in {minutes} (wall time" in (run / "report.md").read_text()
    trained = run / "trained_model"
    assert f"temper quickstart: the trained model is a Hugging Face folder, {trained}; serve it with" in printed
    assert f"temper serve --model {trained} --port 30000" in printed
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final, initial = (AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32) for m in (trained, tmp_path / "model"))
    assert AutoTokenizer.from_pretrained(trained).chat_template
    assert not torch.equal(final.model.layers[0].mlp.up_proj.weight, initial.model.layers[0].mlp.up_proj.weight)


def test_temper_convert_exports_the_trained_actor(sync_run, task, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from temper.cli import main

    _, out = sync_run
    model, _ = task
    assert (
        main(
            [
                "convert",
                "--input-dir",
                str(out / "ckpt"),
                "--origin-hf-dir",
                str(model),
                "--output-dir",
                str(tmp_path / "hf"),
            ]
        )
        == 0
    )
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    start = AutoModelForCausalLM.from_pretrained(model)
    assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight, start.model.layers[0].mlp.up_proj.weight)
    assert (
        main(
            [
                "convert",
                "--input-dir",
                str(tmp_path / "none"),
                "--origin-hf-dir",
                str(model),
                "--output-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "no temper checkpoint here" in capsys.readouterr().err


LIST_GENERATE = """
from temper.rollout.generate import default_sampling_params, generate

async def custom_generate(args, samples, evaluation=False):
    with open({calls!r}, "a") as f:
        f.write(f"{{len(samples)}} {{evaluation}}\\n")
    params = default_sampling_params(args, evaluation=evaluation)
    return [await generate(args, s, dict(params)) for s in samples]
"""

CLASS_RM = """
class CustomRewardModel:
    def __init__(self, model_path):
        with open({built!r}, "a") as f:
            f.write(f"{{model_path}}\\n")

    def compute_reward(self, prompts, responses):
        return [0.25] * len(responses)
"""


def test_list_style_generate_and_class_reward_model_files(task, tmp_path):
    """slime's page as written: `--custom-rm-path custom_rm.py` (a bare file holding CustomRewardModel) and
    `--custom-generate-function-path gen.py:custom_generate` (the list form), with evaluation."""
    _, prompts = task
    calls, built = tmp_path / "calls.txt", tmp_path / "built.txt"
    (tmp_path / "gen.py").write_text(LIST_GENERATE.format(calls=str(calls)))
    (tmp_path / "custom_rm.py").write_text(CLASS_RM.format(built=str(built)))
    flags = task_flags(
        task, tmp_path, "--rollout-num-gpus", "1", "--custom-rm-path", str(tmp_path / "custom_rm.py"),
        "--custom-generate-function-path", f"{tmp_path / 'gen.py'}:custom_generate",
        "--eval-interval", "1", "--eval-prompt-data", "e", f"{prompts}@[0:2]", steps=2, save_rollouts=False,
    )  # fmt: skip
    flags[flags.index("--actor-num-gpus-per-node") + 1] = "1"
    steps = load_driver("train").main(flags)
    assert [s["step"] for s in steps] == [0, 1]
    assert built.read_text().splitlines() == ["None"]  # built once, without --reward-model-path
    lines = calls.read_text().splitlines()
    assert sorted(line for line in lines if line.endswith("False")) == ["8 False"] * 8  # a call per group
    assert {line for line in lines if line.endswith("True")} == {"1 True"}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["rollout/raw_reward"] for m in metrics if "rollout/raw_reward" in m]  # eval lines have none
    assert rewards == [0.25, 0.25]  # the reward model's value
    assert steps[-1]["eval/e"] == 0.25


EVAL_CONFIG = """
eval:
  defaults:
    max_response_len: 4
  datasets:
    - name: wide
      path: {prompts}@[0:2]
      n_samples_per_eval_prompt: 4
      custom_rm_path: {rm}:one
    - name: short
      path: {prompts}@[2:3]
      n_samples_per_eval_prompt: 2
      max_response_len: 2
"""


def test_eval_config_and_passrate_in_a_train_run(task, tmp_path):
    """--eval-config's two datasets, each with its own samples per prompt, length limit and reward, give
    eval/<name>/pass@k up to their n; --log-passrate gives passrate/pass@k over the training groups."""
    _, prompts = task
    (tmp_path / "rm.py").write_text("def one(args, sample):\n    return 1.0\n")
    config = tmp_path / "eval.yaml"
    config.write_text(EVAL_CONFIG.format(prompts=prompts, rm=tmp_path / "rm.py"))
    flags = task_flags(
        task, tmp_path, "--rollout-num-gpus", "1", "--eval-interval", "1", "--eval-config", str(config),
        "--log-passrate", "--skip-eval-before-train", steps=1, save_rollouts=False,
    )  # fmt: skip
    flags[flags.index("--actor-num-gpus-per-node") + 1] = "1"
    (step,) = load_driver("train").main(flags)
    assert {k for k in step if k.startswith("passrate/")} == {f"passrate/pass@{k}" for k in (1, 2, 4, 8)}
    assert 0.0 <= step["passrate/pass@1"] <= step["passrate/pass@8"] <= 1.0
    assert {k for k in step if "/pass@" in k and k.startswith("eval/")} == {
        "eval/wide/pass@1", "eval/wide/pass@2", "eval/wide/pass@4", "eval/short/pass@1", "eval/short/pass@2",
    }  # fmt: skip
    assert step["eval/wide"] == step["eval/wide/pass@1"] == 1.0  # the dataset's own reward function
    assert step["eval/wide/response_len_mean"] <= 4 and step["eval/short/response_len_mean"] <= 2


@pytest.fixture(scope="module")
def killed_and_resumed(sync_run, task, tmp_path_factory):
    """sync_run's command (own --save) with train rank 0 SIGKILLed while it trains rollout 2, then the same command
    with --load on that --save, as the error says: the error, the killed run's last metrics line, the resumed
    run's step records and the folder both ran in."""
    import os
    import signal
    from types import SimpleNamespace

    from temper.cluster import run_driver

    train_module = load_driver("train")

    def killing_loop(cfg, cluster, log):
        train = cluster.train

        def train_killing_rank_0(rollout_id, batch):
            if rollout_id == 2:
                os.kill(cluster.actor.ids[0].pid, signal.SIGKILL)
            return train(rollout_id, batch)

        cluster.train = train_killing_rank_0
        return train_module.train(cfg, cluster, log)

    out = tmp_path_factory.mktemp("killed")
    ckpt = out / "ckpt"
    flags = task_flags(task, out, "--rollout-num-gpus", "2", "--save", str(ckpt), "--save-interval", "2")
    try:
        run_driver(killing_loop, flags, prog="train.py")
        stopped = None
    except SystemExit as e:
        stopped = e
    last_line = json.loads((out / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    resumed = train_module.main(flags + ["--load", str(ckpt)])
    return SimpleNamespace(stopped=stopped, last_line=last_line, resumed=resumed, out=out, ckpt=ckpt)


def test_a_dead_train_rank_stops_the_run_naming_the_checkpoint_and_load_resumes_it(sync_run, killed_and_resumed):
    """SIGKILL of train rank 0 while it trains rollout 2: the run stops with an error naming the rank, the
    last checkpoint (rollout 1's) and the command that resumes; that command trains rollouts 2 and 3 as the
    uninterrupted run did (compared in full by test_resume_continues_exactly)."""
    full, _ = sync_run
    run, ckpt = killed_and_resumed, killed_and_resumed.ckpt
    assert run.stopped is not None, "the run went on with a dead train rank"
    message = str(run.stopped)
    assert "actor train: actor rank 0 (pid" in message and "died" in message, message
    assert f"its last checkpoint is rollout 1's in {ckpt}" in message
    assert message.rstrip().endswith(f"--load {ckpt}")
    assert run.last_line["step"] == 1

    assert [s["step"] for s in run.resumed] == [2, 3]
    for want, got in zip(full[2:], run.resumed):
        exact = [k for k in want if k.startswith(("rollout/raw", "train/loss", "train/grad_norm"))]
        assert {k: got[k] for k in exact} == {k: want[k] for k in exact}
