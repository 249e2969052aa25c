"""EngineGroup's words on a failed engine: its name, pid and the last lines of its log file."""

from __future__ import annotations

from types import SimpleNamespace

from temper.cluster.engine_group import EngineGroup, EngineSlot, engine_log_file, last_lines


def test_describe_failure_names_the_engine_and_its_last_log_lines(tmp_path):
    cfg = SimpleNamespace(run_dir=str(tmp_path / "run"))
    log = engine_log_file(cfg, "engine-1")
    assert log == str(tmp_path / "run" / "engines" / "engine-1.log")
    (tmp_path / "run" / "engines").mkdir(parents=True)
    (tmp_path / "run" / "engines" / "engine-1.log").write_text("".join(f"line {i}\n" for i in range(20)))
    group = EngineGroup(["http://127.0.0.1:1", "http://127.0.0.1:2", "http://10.0.0.9:3"])
    group.slots = [EngineSlot("engine-0", {}, (), None, pid=11), EngineSlot("engine-1", {}, (), log, pid=12)]
    text = group.describe_failure("http://127.0.0.1:2/")
    assert text.startswith(f" (engine-1, pid 12); the last lines of its log {log}:\n    line 12\n")
    assert text.endswith("line 19") and "line 11" not in text
    assert group.describe_failure("http://127.0.0.1:1") == " (engine-0, pid 11); it wrote no log"
    assert group.describe_failure("http://10.0.0.9:3") == ""  # an external engine: temper knows nothing more
    assert group.slot_of("http://127.0.0.1:2") == 1 and group.slot_of("http://10.0.0.9:3") is None
    assert last_lines(str(tmp_path / "missing.log")) == []
