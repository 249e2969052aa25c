"""What a train rank reports of its current work (temper/train/work_progress.py): the stages of a rollout's
training (reference and old log-probs, each optimizer step), of a checkpoint and of the weights' bytes, each
micro-batch and its tokens counted as it is handed to the device; read from another thread at any time."""

import threading

import pytest
from train_helpers import make_cfg, toy_batch

from temper.train import Actor
from temper.train.work_progress import WorkProgress, WorkState


def test_a_stage_counts_its_units_and_ends():
    progress = WorkProgress()
    assert progress.snapshot() is None
    with progress.stage("train", "step 1/2", total=3, unit="micro-batches"):
        progress.advance(tokens=10)
        progress.advance(tokens=5)
        state = progress.snapshot()
    assert (state.kind, state.stage, state.done, state.total, state.unit, state.tokens) == (
        "train", "step 1/2", 2, 3, "micro-batches", 15
    )  # fmt: skip
    assert state.seconds >= 0 and progress.snapshot() is None
    with pytest.raises(RuntimeError), progress.stage("save", "actor checkpoint"):
        raise RuntimeError("disk full")
    assert progress.snapshot() is None  # a stage that fails ends too


def test_another_thread_reads_the_stage_while_it_runs():
    progress, seen, started, release = WorkProgress(), [], threading.Event(), threading.Event()

    def work():
        with progress.stage("sync", "weights", total=100, unit="bytes"):
            progress.advance(40)
            started.set()
            release.wait(10)

    thread = threading.Thread(target=work)
    thread.start()
    assert started.wait(10)
    seen.append(progress.snapshot())
    release.set()
    thread.join(10)
    assert seen[0].stage == "weights" and seen[0].done == 40 and seen[0].total == 100


@pytest.fixture
def stages(monkeypatch):
    """Every stage begun, and every state at each `advance`, in order."""
    begun, advanced = [], []
    stage, advance = WorkProgress.stage, WorkProgress.advance

    def spy_stage(self, kind, name, total=None, unit=""):
        begun.append((kind, name, total, unit))
        return stage(self, kind, name, total, unit)

    def spy_advance(self, done=1, tokens=0):
        advance(self, done, tokens)
        advanced.append(self.snapshot())

    monkeypatch.setattr(WorkProgress, "stage", spy_stage)
    monkeypatch.setattr(WorkProgress, "advance", spy_advance)
    return begun, advanced


def test_a_rollout_s_training_goes_through_its_stages_micro_batch_by_micro_batch(qwen3_dir, stages):
    begun, advanced = stages
    cfg = make_cfg(qwen3_dir, num_steps_per_rollout=2, use_kl_loss=True, kl_loss_coef=0.1, micro_batch_size=2)
    actor = Actor(cfg)
    batch = toy_batch(8)
    begun.clear()
    actor.train(0, batch)
    # 8 samples in 2 steps of 4, 2 per micro-batch: 4 micro-batches per log-prob pass, 2 per step
    assert begun == [("train", "ref log-probs", 4, "micro-batches"), ("train", "log-probs", 4, "micro-batches"),
                     ("train", "step 1/2", 2, "micro-batches"), ("train", "step 2/2", 2, "micro-batches")]  # fmt: skip
    assert [(s.stage, s.done) for s in advanced] == [
        *(("ref log-probs", i) for i in (1, 2, 3, 4)), *(("log-probs", i) for i in (1, 2, 3, 4)),
        ("step 1/2", 1), ("step 1/2", 2), ("step 2/2", 1), ("step 2/2", 2),
    ]  # fmt: skip
    tokens = sum(len(t) for t in batch.tokens)
    passes = {stage: max(s.tokens for s in advanced if s.stage == stage) for stage in ("ref log-probs", "log-probs")}
    steps = sum(max(s.tokens for s in advanced if s.stage == stage) for stage in ("step 1/2", "step 2/2"))
    assert passes == {"ref log-probs": tokens, "log-probs": tokens} and steps == tokens
    assert actor.progress.snapshot() is None


def test_a_checkpoint_and_the_weights_are_stages_too(qwen3_dir, stages, tmp_path):
    begun, _ = stages
    actor = Actor(make_cfg(qwen3_dir, save=str(tmp_path / "ckpt"), save_hf=str(tmp_path / "hf")))
    begun.clear()
    actor.save(0)
    assert begun == [("save", "actor checkpoint", None, ""), ("save", "Hugging Face export", None, "")]
    sent = sum(t.numel() * t.element_size() for bucket in actor.iter_weight_buckets() for _, t in bucket)
    assert actor.weight_bytes() == sent  # the sync stage's total: every byte the buckets hold


def test_states_cross_process_boundaries_as_plain_data():
    import pickle

    state = WorkState("train", "step 1/1", 1, 2, "micro-batches", 100, 0.5)
    assert pickle.loads(pickle.dumps(state)) == state
