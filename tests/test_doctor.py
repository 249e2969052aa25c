"""`temper doctor` on this machine: every line present with a known verdict, and known-bad environment
settings flagged (set with monkeypatch)."""

import pytest

from temper import doctor
from temper.cli import main

LINES = ("python", "temper", "torch", "transformers", "ray", "cuda", "nccl", "cpu", "host memory", "ports",
         "hostname", "disk .", "disk /tmp", "/dev/shm", "sglang", "vllm", "math-verify", "tensorboard",
         "wandb")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "CUDA_LAUNCH_BLOCKING", "RAY_ADDRESS",
                 "NO_PROXY", "no_proxy", *doctor.PROXY_VARS):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def by_name(checks):
    return {c.name: c for c in checks}


def test_every_line_with_a_verdict(clean_env, capsys):
    checks = doctor.run_checks()
    names = [c.name for c in checks]
    assert all(name in names for name in LINES), names
    assert {c.verdict for c in checks} <= set(doctor.VERDICTS)
    found = by_name(checks)
    assert found["python"].verdict == "ok" and found["torch"].verdict == "ok"
    assert found["ports"].verdict == "ok" and "127.0.0.1" in found["ports"].detail
    assert found["math-verify"].verdict == "ok"  # a requirement of temper's, installed
    assert found["environment"].detail == "no known-bad settings"

    assert main(["doctor"]) == 0  # nothing fails on this machine
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(checks) + 1 and out[-1].endswith("fail")
    assert all(line.split()[0] in doctor.VERDICTS for line in out[:-1])


def test_empty_cuda_visible_devices_fails(clean_env):
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")
    check = by_name(doctor.run_checks())["CUDA_VISIBLE_DEVICES"]
    assert check.verdict == "fail" and "empty string" in check.detail
    assert "environment" not in by_name(doctor.run_checks())


def test_nccl_and_launch_blocking_warn(clean_env):
    clean_env.setenv("NCCL_P2P_DISABLE", "1")
    clean_env.setenv("CUDA_LAUNCH_BLOCKING", "1")
    found = by_name(doctor.run_checks())
    assert found["NCCL_P2P_DISABLE"].verdict == "warn" and found["CUDA_LAUNCH_BLOCKING"].verdict == "warn"


@pytest.mark.parametrize(("no_proxy", "flagged"), [
    (None, "127.0.0.1 or localhost"),
    ("localhost", "127.0.0.1"),
    ("127.0.0.0/8,.localhost", None),
    ("localhost, 127.0.0.1", None),
    ("*", None),
])  # fmt: skip
def test_proxy_without_loopback_in_no_proxy_warns(clean_env, no_proxy, flagged):
    clean_env.setenv("https_proxy", "http://proxy.example:3128")
    if no_proxy is not None:
        clean_env.setenv("NO_PROXY", no_proxy)
    check = by_name(doctor.run_checks()).get("https_proxy")
    if flagged is None:
        assert check is None
    else:
        assert check.verdict == "warn" and f"does not cover {flagged}:" in check.detail


def test_unreachable_ray_address_fails(clean_env):
    clean_env.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens on port 1
    check = by_name(doctor.run_checks())["ray cluster"]
    assert check.verdict == "fail" and "does not answer" in check.detail


def test_a_failing_check_sets_the_exit_status(clean_env, capsys):
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["doctor"]) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("1 fail")
