"""The sandbox for user code: each escape it is built to stop comes back as a result, never an exception.

The fork bombs are bounded on purpose (at most 127 processes, each asleep), so that a broken sandbox
cannot take the machine down.
"""

import asyncio
import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
import uuid

import pytest

from temper.rollout import sandbox, sandbox_watchdog
from temper.rollout.sandbox import ERROR_KINDS, Isolation, describe_isolation, isolation, run_python, run_python_async

# Code that gets past the audit hook on purpose (a fresh copy of _posixsubprocess, whose fork_exec
# the hook cannot see) and starts `argv` as a plain program: what the kernel layer has to hold against.
SPAWN_PAST_THE_HOOK = textwrap.dedent("""
    import importlib.util, os, sys
    _fresh = importlib.util.module_from_spec(importlib.util.find_spec("_posixsubprocess"))

    def spawn(argv):
        r, w = os.pipe()
        common = [[a.encode() for a in argv], (sys.executable.encode(),), True, (w,), None, None,
                  -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None]
        try:
            return _fresh.fork_exec(*common, False)  # 3.11's signature (allow_vfork last)
        except TypeError:
            return _fresh.fork_exec(*common)
""")


def _processes_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


@pytest.fixture(params=["namespaces", "no-namespaces"])
def kernel(request, monkeypatch):
    """Run a test with what this machine's kernel gives (unshare) and again without any namespace."""
    if request.param == "namespaces" and not isolation().wrapper:
        pytest.skip(f"no namespaces on this machine ({describe_isolation()})")
    if request.param == "no-namespaces":
        monkeypatch.setattr(sandbox, "isolation", lambda: Isolation((), False, False, os.geteuid() != 0))
    return request.param


@pytest.fixture
def marker():
    """A unique word for the processes a test starts; any left at the end are killed (and fail the test)."""
    word = f"sandbox-test-{uuid.uuid4().hex[:12]}"
    yield word
    deadline = time.monotonic() + 3  # SIGKILL-ed processes take a moment to go on a busy machine
    while (left := _processes_with(word)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after the sandbox returned: {left}"


def test_normal_code_gives_its_output_and_exit_status():
    result = run_python("import sys\nprint('hello', 6 * 7)\nprint('warn', file=sys.stderr)")
    assert result.ok and result.error is None and result.exit_code == 0
    assert result.stdout == "hello 42\n" and result.stderr == "warn\n" and not result.truncated
    assert result.output == "hello 42\nwarn\n" and result.tool_text() == result.output
    assert 0 < result.duration_s < 10


def test_user_errors_are_results_with_a_kind():
    raised = run_python("def f():\n    raise ValueError('bad input')\nf()")
    assert (raised.ok, raised.error, raised.exit_code) == (False, "exception", 1)
    assert raised.message == "ValueError: bad input"
    assert 'File "main.py", line 2, in f' in raised.stderr and "<string>" not in raised.stderr
    assert raised.tool_text().endswith("[exception] ValueError: bad input")

    exited = run_python("import sys; sys.exit(3)")
    assert (exited.error, exited.exit_code, exited.message) == ("exit_code", 3, "exited with status 3")

    crashed = run_python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert (crashed.error, crashed.exit_code, crashed.message) == ("killed", -signal.SIGSEGV, "killed by SIGSEGV")
    assert {raised.error, exited.error, crashed.error} <= set(ERROR_KINDS)


def test_infinite_loop_times_out_within_twice_the_limit(kernel):
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=2, cpu_s=30)
    assert result.error == "timeout" and not result.ok
    assert "2 s" in result.message
    assert time.monotonic() - start < 4


def test_cpu_limit(kernel):
    result = run_python("while True:\n    pass", timeout_s=60, cpu_s=1)
    assert result.error == "cpu", result
    assert result.message == "CPU time limit of 1 s reached"


def test_huge_allocation_is_a_memory_error():
    result = run_python("x = bytearray(4 * 1024**3)", memory_mb=256)
    assert result.error == "memory", result
    growing = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", memory_mb=256)
    assert growing.error == "memory", growing
    assert "MemoryError" in growing.stderr


def test_fork_bomb_is_refused(marker):
    bomb = textwrap.dedent(f"""
        import os, time
        # bounded: at most 2**6 processes even if every fork succeeded
        for depth in range(6):
            if os.fork() == 0:
                continue
        time.sleep(20)  # {marker}
    """)
    result = run_python(bomb, timeout_s=10)
    assert (result.error, result.forbidden) == ("forbidden", "process"), result
    assert "os.fork" in result.message


def test_fork_bomb_past_the_hook_is_killed_by_the_watchdog(marker, kernel):
    # Each process of the bomb forks two children, six levels deep (127 processes at most), then sleeps.
    bomb = textwrap.dedent("""
        import os, sys, time
        depth, kids = int(sys.argv[2]), 0
        while depth > 0 and kids < 2:
            if os.fork() == 0:
                depth, kids = depth - 1, 0
            else:
                kids += 1
        time.sleep(20)
    """)
    code = SPAWN_PAST_THE_HOOK + f"spawn(['python', '-c', {bomb!r}, {marker!r}, '6'])\nimport time\ntime.sleep(20)"
    start = time.monotonic()
    result = run_python(code, timeout_s=15, max_processes=8)
    if result.error == "exception" and "TypeError" in result.message:
        pytest.skip(f"this Python's _posixsubprocess.fork_exec takes other arguments: {result.message}")
    assert result.error == "processes", result
    assert "more than 8 processes" in result.message
    assert time.monotonic() - start < 10
    assert not _processes_with(marker)


def test_reading_outside_the_working_directory_is_forbidden():
    for code in (
        "open('/etc/passwd').read()",
        "import pathlib; pathlib.Path('/etc/hostname').read_text()",
        "import os; os.listdir('/root')",
        "open('../outside.txt', 'w')",
        "import os; os.symlink('/etc/passwd', 'p'); open('p').read()",
    ):
        result = run_python(code)
        assert (result.error, result.forbidden) == ("forbidden", "file"), (code, result)
    # A caught refusal is the code's business: the run is ok, and the refusal is on record.
    caught = run_python("try:\n    open('/etc/passwd')\nexcept PermissionError:\n    print('refused')")
    assert caught.ok and caught.stdout == "refused\n"
    assert caught.refused and "/etc/passwd" in caught.refused[0]


def test_the_working_directory_and_the_python_installation_are_usable():
    code = textwrap.dedent("""
        import json, os, sys, tempfile
        open('out.txt', 'w').write('x')
        os.makedirs('sub/dir')
        with tempfile.NamedTemporaryFile() as f:
            pass
        print(open('data.json').read(), input(), sorted(os.listdir('.'))[:3], json.__name__)
    """)
    result = run_python(code, files={"data.json": '{"a": 1}'}, stdin="from stdin\n")
    assert result.ok, result
    assert result.stdout == "{\"a\": 1} from stdin ['data.json', 'main.py', 'out.txt'] json\n"


def test_opening_a_socket_is_forbidden(kernel):
    for code in ("import socket; socket.socket()", "import socket; socket.getaddrinfo('example.com', 80)",
                 "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9')"):  # fmt: skip
        result = run_python(code)
        assert (result.error, result.forbidden) == ("forbidden", "network"), (code, result)


def test_no_network_even_past_the_hook():
    if not isolation().network_namespace:
        pytest.skip(f"no network namespace on this machine ({describe_isolation()})")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        probe = textwrap.dedent(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("connected")
            except OSError as e:
                print("no network:", e.errno)
        """)
        code = SPAWN_PAST_THE_HOOK + f"os.waitpid(spawn(['python', '-c', {probe!r}]), 0)"
        result = run_python(code, timeout_s=10)
    if "TypeError" in result.stderr:
        pytest.skip("this Python's _posixsubprocess.fork_exec takes other arguments")
    assert "no network" in result.stdout and "connected" not in result.stdout, result


def test_ten_megabytes_of_output_are_cut():
    result = run_python("import sys\nsys.stdout.write('x' * 10_000_000)\nprint('tail', file=sys.stderr)",
                        max_output_bytes=1000)  # fmt: skip
    assert result.ok and result.truncated
    assert result.stdout.startswith("x" * 1000) and "9999000 more bytes not shown" in result.stdout
    assert len(result.stdout) < 1100 and result.stderr == "tail\n"


def test_the_working_directory_is_removed_and_the_environment_is_not_passed(monkeypatch):
    monkeypatch.setenv("TEMPER_TEST_SECRET", "do-not-leak")
    result = run_python("import os\nprint(os.getcwd())\nprint(os.environ.get('TEMPER_TEST_SECRET'))")
    workdir, secret = result.stdout.split()
    assert secret == "None"
    assert os.path.basename(workdir).startswith("temper-sandbox-")
    assert not os.path.exists(workdir)


def test_many_runs_in_parallel_from_asyncio():
    async def main():
        runs = [run_python_async(f"print({i} * {i})") for i in range(12)]
        runs.append(run_python_async("while True:\n    pass", timeout_s=2))
        return await asyncio.gather(*runs)

    start = time.monotonic()
    results = asyncio.run(main())
    assert [r.stdout for r in results[:-1]] == [f"{i * i}\n" for i in range(12)]
    assert all(r.ok for r in results[:-1]) and results[-1].error == "timeout"
    assert time.monotonic() - start < 60


def test_sync_form_inside_a_running_loop():
    async def main():
        return run_python("print('from a thread')")

    assert asyncio.run(main()).stdout == "from a thread\n"


def test_a_cancelled_run_leaves_nothing_behind(marker, kernel):
    before = set(os.listdir(tempfile.gettempdir()))

    async def main():
        task = asyncio.create_task(run_python_async(f"import time\ntime.sleep(30)  # {marker}", timeout_s=30))
        await asyncio.sleep(1.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    new = {d for d in set(os.listdir(tempfile.gettempdir())) - before if d.startswith("temper-sandbox-")}
    assert not new


def test_bad_limits_are_the_callers_error():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0)
    with pytest.raises(ValueError, match="relative path"):
        run_python("pass", files={"/etc/x": "no"})
    with pytest.raises(ValueError, match="main.py is the code"):
        run_python("pass", files={"main.py": "print(1)"})


def test_watchdog_counts_a_process_tree(marker):
    # A plain process tree outside any sandbox: the watchdog counts it and kills it past the limit.
    import subprocess

    forks = "import os, time\nfor _ in range(3):\n    os.fork()\ntime.sleep(20)"  # 8 processes
    tree = subprocess.Popen([sys.executable, "-c", forks, marker], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(_processes_with(marker)) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        if sandbox_watchdog._has_children_files():  # the kernel's child lists and a /proc scan agree
            by_scan = sandbox_watchdog._members(tree.pid, sandbox_watchdog._scan_proc())
            assert sandbox_watchdog._members(tree.pid, None) == by_scan and len(by_scan) == 8
        dog = sandbox_watchdog.Watchdog()
        watch = dog.watch(tree.pid, max_processes=4, helpers=0)
        dog.check()
        dog.unwatch(watch)
        assert watch.peak_processes == 8 and watch.killed == "more than 4 processes (8 seen)"
        assert tree.wait(timeout=5) == -signal.SIGKILL
    finally:
        sandbox_watchdog.kill_all(tree.pid)
        tree.wait()


def test_a_sandbox_that_cannot_start_is_a_result(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation", lambda: Isolation((), False, False, os.geteuid() != 0))
    monkeypatch.setattr(sandbox.sys, "executable", "/nonexistent/python")
    result = run_python("print(1)")
    assert (result.ok, result.error, result.exit_code) == (False, "sandbox", None)
    assert "could not run the code" in result.message and "/nonexistent/python" in result.message
