"""The run report with pictures (report_html.py, plots.py, health.py, samples.py): rendered from a
recorded metrics.jsonl with the keys a GRPO run logs, from one with a few keys, and by `temper report`."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys

import pytest

from temper.command_line import parse_config
from temper.observe import RunLog
from temper.observe.health import health_checks
from temper.observe.report_html import write_html_report
from temper.observe.run_metrics import RunMetrics
from temper.observe.samples import read_samples, report_samples
from temper.types import Sample

STEPS = 12
PNG = b"\x89PNG\r\n\x1a\n"


def grpo_record(step: int) -> dict:
    """One step record as train.py writes it (rollout/, train/, sync/, time/), with a learning reward,
    a collapsing entropy and a rising log-prob mismatch."""
    t = step / (STEPS - 1)
    record = {
        "rollout/num_samples": 32, "rollout/raw_reward": 0.05 + 0.85 * t, "rollout/response_len_mean": 120 - 40 * t,
        "rollout/response_len_max": 256, "rollout/response_len_p50": 110 - 40 * t, "rollout/response_len_p90": 200 - 30 * t,
        "rollout/truncated_ratio": 0.1 * (1 - t), "passrate/pass@1": 0.05 + 0.8 * t, "passrate/pass@8": 0.3 + 0.6 * t,
        "train/entropy": 2.5 * math.exp(-3 * t), "train/ppo_kl": 0.001 * step, "train/kl_loss": 0.002 * step,
        "train/pg_clipfrac": 0.02 + 0.01 * t, "train/train_rollout_logprob_abs_diff": 0.002 * (1 + 4 * t),
        "train/grad_norm": 1.0 - 0.5 * t, "train/tokens": 4096, "train/loss": -0.01,
        "memory/train_peak_gib": 30.5 + t, "memory/engine_kv_cache_bytes": 20 * 2**30,
        "sync/weight_version": step + 1,
        "time/rollout": 10.0 - 3 * t, "time/train": 6.0, "time/sync": 0.4, "time/step": 17.0 - 3 * t,
        "time/elapsed": 30 + 17.0 * (step + 1),
    }  # fmt: skip
    if step % 4 == 3:  # --eval-interval 4
        record |= {"eval/gsm8k": 0.1 + 0.7 * t, "eval/gsm8k/pass@1": 0.1 + 0.7 * t, "eval/gsm8k/pass@4": 0.3 + 0.6 * t,
                   "eval/gsm8k/response_len_mean": 150 - 30 * t, "eval/gsm8k/truncated_ratio": 0.05}  # fmt: skip
    return record


def write_metrics(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    """A recorded GRPO run (an eval before training, 12 steps, an unreadable line) and its report."""
    folder = tmp_path_factory.mktemp("grpo") / "run"
    before = {"step": 0, "eval/gsm8k": 0.08, "eval/gsm8k/pass@1": 0.08, "eval/gsm8k/pass@4": 0.25}
    write_metrics(folder, [before] + [{"step": s, **grpo_record(s)} for s in range(STEPS)])
    with open(folder / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    return folder, write_html_report(folder)


def data_uris(page: str) -> list[str]:
    return re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)


def test_every_panel_is_a_png_and_a_data_uri_in_the_page(grpo_run):
    folder, files = grpo_run
    expected = {"reward", "pass_at_k", "response_length", "truncation", "kl", "entropy", "clipfrac",
                "logprob_mismatch", "grad_norm", "throughput", "step_time", "memory"}  # fmt: skip
    assert set(files.plots) == expected
    page = files.html.read_text()
    assert len(data_uris(page)) == len(expected)
    for name, path in files.plots.items():
        assert path == folder / "plots" / f"{name}.png" and path.read_bytes().startswith(PNG)
        assert f'<figure id="{name}"><img' in page
    assert files.combined == folder / "report.png" and files.combined.read_bytes().startswith(PNG)
    assert files.combined.stat().st_size < 300_000
    # self-contained: nothing to fetch
    assert not re.search(r"""(src|href)=["']?(https?:|//|[a-z/]+\.(png|css|js))""", page)
    assert "<script" not in page and "<link" not in page
    assert "1 lines of metrics.jsonl were not metrics records" in page
    assert "12 rollout steps (0..11)" in page


def test_health_list_in_the_page(grpo_run):
    page = grpo_run[1].html.read_text()
    lines = [re.sub(r"<[^>]+>", "", m) for m in re.findall(r"<li class=\"(?:ok|warn|unmeasured)\">(.*?)</li>", page)]
    assert [line.split(":")[0] for line in lines] == ["entropy collapse", "reward flat", "mismatch rising",
                                                      "truncation high"]  # fmt: skip
    assert lines[0].startswith("entropy collapse: warn — train/entropy 1.95 → 0.168 nats/token")
    assert lines[1].startswith("reward flat: ok — rollout/raw_reward 0.127 → 0.823")
    assert lines[2].startswith("mismatch rising: warn — train/train_rollout_logprob_abs_diff 0.00273 → 0.00927 nats")
    assert lines[3] == (
        "truncation high: ok — 1% of responses cut at --rollout-max-response-len (mean of the last 3 steps)"
    )


def test_eval_points_sit_at_the_weights_they_measured(grpo_run):
    run = RunMetrics.read(grpo_run[0] / "metrics.jsonl")
    xs, ys = run.eval_series("eval/gsm8k")
    assert xs == [0.0, 4.0, 8.0, 12.0] and ys[0] == 0.08  # before training, then after steps 3, 7, 11
    assert run.eval_sets() == ["gsm8k"]
    assert run.pass_at_k_keys() == ["passrate/pass@1", "passrate/pass@8", "eval/gsm8k/pass@1", "eval/gsm8k/pass@4"]


def test_a_flat_reward_warns(tmp_path):
    records = [{"step": s, "rollout/raw_reward": 0.3 + 0.001 * s, "time/step": 1.0} for s in range(8)]
    run = RunMetrics.read(write_metrics(tmp_path, records) / "metrics.jsonl")
    flat = health_checks(run)[1]
    assert flat.verdict == "warn" and flat.detail == (
        "rollout/raw_reward 0.301 → 0.306 (means of the first and last 3 steps), best 0.307: gained less than 0.02"
    )


def test_a_metrics_file_with_a_few_keys_still_renders(tmp_path):
    records = [{"step": 0, "rollout/raw_reward": 0.0}, {"step": 1, "rollout/raw_reward": None},  # nan is written null
               {"step": 2, "rollout/raw_reward": 0.2, "time/step": 2.0, "time/elapsed": 6.0}]  # fmt: skip
    files = write_html_report(write_metrics(tmp_path / "run", records))
    assert set(files.plots) == {"reward", "step_time"}
    assert RunMetrics.read(tmp_path / "run" / "metrics.jsonl").series("rollout/raw_reward") == ([0.0, 2.0], [0.0, 0.2])
    page = files.html.read_text()
    assert len(data_uris(page)) == 2
    assert "Not plotted, not in the metrics: pass@k, response length, truncation, KL, entropy" in page
    assert "entropy collapse</b>: not measured — no train/entropy in the metrics" in page
    assert "reward flat</b>: ok — 2 steps: too few to judge (needs 6)" in page
    assert "No samples.jsonl in this run folder" in page


def test_a_run_without_steps_renders(tmp_path):
    files = write_html_report(write_metrics(tmp_path / "run", []))
    assert files.plots == {} and files.combined is None
    assert "No rollout step finished." in files.html.read_text()


def test_samples_of_the_first_and_last_step(tmp_path):
    cfg = parse_config(["--rollout-batch-size", "2", "--num-rollout", "2", "--run-dir", str(tmp_path / "run")],
                       check_shape=False)  # fmt: skip
    with RunLog(cfg, stream=io.StringIO()) as log:
        for step in range(2):
            samples = [
                Sample(prompt=[{"role": "user", "content": f"What is {i} + 1? <b>"}], response=f"answer {i + step}",
                       reward=(i + step) / 10, response_length=3, status=Sample.Status.COMPLETED)
                for i in range(6)
            ]  # fmt: skip
            log.samples(step, samples)
            log.step(step, {"rollout/raw_reward": 0.1})
    by_step = read_samples(tmp_path / "run" / "samples.jsonl")
    assert [len(rows) for rows in by_step.values()] == [4, 4]  # 2 best + 2 worst of 6
    sections = report_samples(by_step)
    assert [heading for heading, _ in sections] == [
        "first step (0): best reward", "first step (0): worst reward",
        "last step (1): best reward", "last step (1): worst reward",
    ]  # fmt: skip
    assert [r["reward"] for r in sections[2][1]] == [0.6, 0.5] and [r["reward"] for r in sections[3][1]] == [0.1, 0.2]
    page = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Samples</h2>" in page and "user: What is 5 + 1? &lt;b&gt;" in page and "answer 6" in page


def test_temper_report_writes_the_files_without_torch(grpo_run, tmp_path):
    folder = write_metrics(tmp_path / "run", [{"step": s, **grpo_record(s)} for s in range(STEPS)])
    probe = "import sys; from temper.cli import main; rc = main(sys.argv[1:]); print('torch' in sys.modules, rc)"
    out = subprocess.run([sys.executable, "-c", probe, "report", str(folder)], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    assert out.splitlines()[-1] == "False 0", out
    assert "temper report: wrote" in out
    assert (folder / "report.html").is_file() and (folder / "report.png").is_file()
    assert len(list((folder / "plots").glob("*.png"))) == 12


def test_temper_report_on_a_folder_without_metrics(tmp_path, capsys):
    from temper.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert f"temper report: no metrics.jsonl in {tmp_path}" in capsys.readouterr().err


def test_report_help_loads_neither_torch_nor_matplotlib():
    probe = (
        "import sys\nfrom temper.cli import main\ntry:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED=' + ','.join(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines()[-1] == "LOADED=", out


def test_a_failed_report_page_leaves_the_run_and_report_md(tmp_path, monkeypatch, caplog):
    def broken(run_dir):
        raise RuntimeError("no fonts")

    monkeypatch.setattr("temper.observe.run_log.write_html_report", broken)
    cfg = parse_config(["--rollout-batch-size", "2", "--num-rollout", "1", "--run-dir", str(tmp_path / "run")],
                       check_shape=False)  # fmt: skip
    with RunLog(cfg, stream=io.StringIO()) as log:
        log.step(0, {"rollout/raw_reward": 0.5})
    assert (tmp_path / "run" / "report.md").is_file() and not (tmp_path / "run" / "report.html").exists()
    assert "the run report's plots were not written" in caplog.text and "no fonts" in caplog.text
