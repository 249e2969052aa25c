"""A sandbox for user code: a reward function's Python snippet, a tool call that runs Python.

`run_python(code)` (sync) and `await run_python_async(code)` (for the rollout's event loop) run `code`
as ``main.py`` in a fresh interpreter, in a new temporary directory that is removed afterwards, and
return a `SandboxResult`. They never raise for anything the code does: a failure is `result.error`,
one of `ERROR_KINDS`, with a one-line `result.message`.

What holds, and how (``describe_isolation()`` says which of these this machine gives):

- kernel (holds against any code): a separate process in its own session; wall-clock timeout, after
  which the whole process group is killed (and, in a PID namespace, every process the code made);
  RLIMIT_CPU, RLIMIT_DATA (plus a looser RLIMIT_AS), RLIMIT_FSIZE, RLIMIT_NOFILE; no core files; a
  minimal environment (no API keys or tokens of the parent); with ``unshare`` (root, or unprivileged
  user namespaces): a network namespace with no interface up (no network, loopback included) and a
  PID namespace; RLIMIT_NPROC for non-root users.
- the watchdog (sandbox_watchdog.py): counts the sandbox's processes and kills a sandbox past
  `max_processes`; a sampler, not a hard limit (the kernel exempts root from RLIMIT_NPROC).
- Python audit hook (sandbox_child.py; stops the ordinary APIs, not a security boundary): refuses
  sockets, starting processes, ctypes calls, reading outside the working directory and the Python
  installation's import paths, writing outside the working directory.

What does not hold: the audit hook can be got around by code written to do so (a fresh copy of an
extension module, for one); such code can then start programs, which the hook does not follow —
they read what the user running temper can read (root: everything) and, without a network
namespace, reach the network. Disk use in the working directory is bounded per file (RLIMIT_FSIZE),
not in total. There is no seccomp filter, no cgroup and no chroot. Run temper as a non-root user on
a machine with user namespaces for the strongest form of this sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from temper.rollout.sandbox_watchdog import WATCHDOG, Watch, kill_all

ERROR_KINDS = ("timeout", "cpu", "memory", "processes", "forbidden", "exception", "exit_code", "killed", "sandbox")
_CHILD_SOURCE = Path(__file__).with_name("sandbox_child.py")
_THREAD_ALLOWANCE = 64  # RLIMIT_NPROC counts threads too
_DRAIN_AFTER_EXIT_S = 2.0


@dataclass(frozen=True)
class SandboxResult:
    """What one run of user code did.

    ok: True when the code ran to the end and exited with status 0.
    error: None when ok, else one of ERROR_KINDS — timeout (wall clock), cpu (RLIMIT_CPU), memory
        (MemoryError under RLIMIT_DATA/AS), processes (the watchdog killed it), forbidden (the code
        ended on a refused operation; `forbidden` says which kind), exception (an uncaught exception;
        its traceback is in stderr), exit_code (sys.exit with a non-zero status), killed (a signal
        the sandbox did not send, e.g. SIGSEGV), sandbox (the sandbox itself failed to run it).
    message: one line for people ("" when ok).
    stdout, stderr: the streams, each cut to max_output_bytes (UTF-8, undecodable bytes replaced).
    exit_code: the interpreter's exit status; -N when a signal N ended it; None if it never started.
    duration_s: wall-clock seconds from start to the end of the process.
    truncated: True when stdout or stderr was cut.
    forbidden: network, file, process, native or introspection when error == "forbidden", else None.
    refused: every operation the sandbox refused, also the ones the code caught (at most 20).
    """

    ok: bool
    error: str | None
    message: str
    stdout: str
    stderr: str
    exit_code: int | None
    duration_s: float
    truncated: bool = False
    forbidden: str | None = None
    refused: tuple[str, ...] = ()

    @property
    def output(self) -> str:
        """stdout then stderr."""
        return self.stdout + self.stderr

    def tool_text(self) -> str:
        """What a tool call answers the model: the output, and a last line naming the error, if any."""
        text = self.output
        if not self.ok:
            text += ("" if not text or text.endswith("\n") else "\n") + f"[{self.error}] {self.message}"
        return text


@dataclass(frozen=True)
class Limits:
    """The limits of one run (see run_python); checked when built."""

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 512
    max_output_bytes: int = 64_000
    max_processes: int = 8
    max_file_mb: int = 16
    max_open_files: int = 256

    def __post_init__(self):
        for name in ("timeout_s", "cpu_s", "memory_mb", "max_output_bytes", "max_processes", "max_file_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)!r}")
        if int(self.cpu_s) != self.cpu_s:
            raise ValueError(f"sandbox limit cpu_s must be a whole number of seconds, got {self.cpu_s!r}")


@dataclass(frozen=True)
class Isolation:
    """What the kernel gives the sandbox on this machine (probed once per process)."""

    wrapper: tuple[str, ...]  # the unshare command line put before the interpreter; () when none works
    network_namespace: bool
    pid_namespace: bool
    nproc_enforced: bool  # RLIMIT_NPROC binds (not for root)

    @property
    def helpers(self) -> int:
        """Processes of the sandbox's own per run: unshare and the PID namespace's first process."""
        return 2 if self.pid_namespace else 0


def run_python(code: str, **kwargs) -> SandboxResult:
    """The sync form of run_python_async (usable from inside a running event loop: it runs in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_python_async(code, **kwargs))
    with ThreadPoolExecutor(1, thread_name_prefix="sandbox") as pool:
        return pool.submit(asyncio.run, run_python_async(code, **kwargs)).result()


async def run_python_async(
    code: str,
    *,
    timeout_s: float = 10.0,
    cpu_s: int = 10,
    memory_mb: int = 512,
    max_output_bytes: int = 64_000,
    max_processes: int = 8,
    max_file_mb: int = 16,
    stdin: str | bytes = b"",
    files: Mapping[str, str | bytes] | None = None,
) -> SandboxResult:
    """Run `code` (Python source) in the sandbox and say what happened; never raises for the code's doing.

    timeout_s: wall-clock limit; cpu_s: CPU seconds (RLIMIT_CPU); memory_mb: RLIMIT_DATA (heap and
    anonymous maps; RLIMIT_AS is set to 4x this + 1 GiB); max_output_bytes: per stream; max_processes:
    processes at once, the interpreter included; max_file_mb: the largest file it may write;
    stdin: fed to the code's standard input; files: name -> content, written to the working directory
    before the run (relative names; "main.py" is the code). Bad limits or file names raise ValueError.
    """
    limits = Limits(timeout_s, cpu_s, memory_mb, max_output_bytes, max_processes, max_file_mb)
    stdin = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
    files = {**_checked(files or {}), "main.py": code}
    workdir = tempfile.mkdtemp(prefix="temper-sandbox-")
    try:
        _write_files(workdir, files)
        return await _run(workdir, limits, stdin)
    except Exception as e:  # noqa: BLE001 - the sandbox's own failure is a result, not an exception
        return SandboxResult(False, "sandbox", f"the sandbox could not run the code: {type(e).__name__}: {e}",
                             "", "", None, 0.0)  # fmt: skip
    finally:
        _remove(workdir)


@cache
def isolation() -> Isolation:
    """Probe, once, which `unshare` form works here (none on machines without namespaces for this user)."""
    unshare = shutil.which("unshare")
    root = os.geteuid() == 0
    candidates = [] if unshare is None else [
        [unshare, *([] if root else ["--user", "--map-root-user"]), "--net", "--pid", "--fork", "--kill-child"],
        [unshare, *([] if root else ["--user", "--map-root-user"]), "--net"],
    ]  # fmt: skip
    for wrapper in candidates:
        try:
            probe = subprocess.run([*wrapper, sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return Isolation(tuple(wrapper), True, "--pid" in wrapper, not root)
    return Isolation((), False, False, not root)


def describe_isolation() -> str:
    """One line: what the kernel adds to the audit hook here."""
    iso = isolation()
    parts = [
        "network namespace (no network)" if iso.network_namespace
        else "no network namespace (the audit hook alone refuses sockets)",
        "PID namespace" if iso.pid_namespace else "no PID namespace",
        "RLIMIT_NPROC" if iso.nproc_enforced else "no RLIMIT_NPROC (root): the watchdog counts processes",
    ]
    return "sandbox: " + ", ".join(parts)


def _checked(files: Mapping[str, str | bytes]) -> Mapping[str, str | bytes]:
    if "main.py" in files:
        raise ValueError("sandbox files: main.py is the code itself; give the file another name")
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"sandbox files: {name!r} must be a relative path inside the working directory")
    return files


def _write_files(workdir: str, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        path = Path(workdir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


async def _run(workdir: str, limits: Limits, stdin: bytes) -> SandboxResult:
    iso = await asyncio.to_thread(isolation)  # the first call probes unshare (a subprocess)
    command = [*iso.wrapper, sys.executable, "-I", "-B", "-X", "utf8", "-c", _child_source()]
    status_r, status_w = os.pipe()
    start = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, _child_config(workdir, limits, status_w, iso), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=workdir, env=_child_env(workdir),
            start_new_session=True, pass_fds=(status_w,),
        )  # fmt: skip
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    watch = WATCHDOG.watch(proc.pid, limits.max_processes, iso.helpers)
    streams = asyncio.gather(_feed(proc, stdin), _read_capped(proc.stdout, limits.max_output_bytes),
                             _read_capped(proc.stderr, limits.max_output_bytes))  # fmt: skip
    try:
        timed_out = await _wait(proc, limits.timeout_s)
        duration = time.monotonic() - start
        _, out, err = await _drain(streams)
    finally:
        WATCHDOG.unwatch(watch)
        if proc.returncode is None:  # cancelled: leave nothing running
            kill_all(proc.pid)
            await proc.wait()
        streams.cancel()
        status = _read_status(status_r)
    return _result(limits, proc.returncode, timed_out, watch, status, out, err, duration)


async def _wait(proc: asyncio.subprocess.Process, timeout_s: float) -> bool:
    """Wait for the process; kill its group at the deadline. Also kills what it left behind. True if timed out."""
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
        timed_out = False
    except asyncio.TimeoutError:
        timed_out = True
        kill_all(proc.pid)
        await proc.wait()
    kill_all(proc.pid)  # processes of its group that outlived it (the group id stays theirs while they live)
    return timed_out


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    try:
        if data:
            proc.stdin.write(data)
            await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the code did not read its input


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, int]:
    """The first `cap` bytes of the stream and its total length (the rest is read and dropped)."""
    kept, total = bytearray(), 0
    while chunk := await stream.read(1 << 16):
        total += len(chunk)
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return bytes(kept), total


async def _drain(streams: asyncio.Future) -> tuple:
    # A process that got out of the group could hold the pipes open: wait a little, then give up on them.
    try:
        return await asyncio.wait_for(streams, _DRAIN_AFTER_EXIT_S)
    except asyncio.TimeoutError:
        return None, (b"", 0), (b"", 0)


def _read_status(fd: int) -> dict:
    """The child's status messages merged (later ones win); {} if it wrote none."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    status: dict = {}
    for line in data.decode(errors="replace").splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            status.update(message)
    return status


def _result(limits: Limits, rc: int | None, timed_out: bool, watch: Watch, status: dict,
            out: tuple[bytes, int], err: tuple[bytes, int], duration: float) -> SandboxResult:  # fmt: skip
    if isinstance(status.get("signal"), int):  # the PID namespace's first process saw the code die by it
        rc = -status["signal"]
    error, message = _classify(limits, rc, timed_out, watch, status)
    truncated = out[1] > len(out[0]) or err[1] > len(err[0])
    refused = tuple(str(r) for r in status.get("refused", ()) if r)
    forbidden = status.get("what") if error == "forbidden" else None
    return SandboxResult(error is None, error, message, _text(out), _text(err), rc, round(duration, 3),
                         truncated, forbidden, refused)  # fmt: skip


def _classify(limits: Limits, rc: int | None, timed_out: bool, watch: Watch, status: dict) -> tuple[str | None, str]:
    end = status.get("end")
    if timed_out:
        return "timeout", f"timed out: still running after {limits.timeout_s:g} s (wall clock)"
    if watch.killed:
        return "processes", f"killed: {watch.killed}; at most {limits.max_processes} may run"
    cpu_kill = rc == -signal.SIGKILL and watch.max_cpu_s >= limits.cpu_s - 2 * WATCHDOG.interval_s
    if end == "cpu" or status.get("cpu") or rc == -signal.SIGXCPU or cpu_kill:
        return "cpu", f"CPU time limit of {limits.cpu_s} s reached"
    if end == "memory":
        return "memory", f"memory limit of {limits.memory_mb} MB reached (MemoryError)"
    if end in ("forbidden", "exception"):
        return end, str(status.get("message", ""))
    if rc is not None and rc < 0:
        return "killed", f"killed by {_signal_name(-rc)}"
    if rc:
        return "exit_code", f"exited with status {rc}"
    return None, ""


def _text(stream: tuple[bytes, int]) -> str:
    kept, total = stream
    text = kept.decode("utf-8", errors="replace")
    if total > len(kept):
        text += f"\n[... {total - len(kept)} more bytes not shown]\n"
    return text


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@cache
def _child_source() -> str:
    return _CHILD_SOURCE.read_text()


def _child_config(workdir: str, limits: Limits, status_fd: int, iso: Isolation) -> str:
    memory = limits.memory_mb << 20
    config = {
        "workdir": workdir, "status_fd": status_fd, "cpu_s": int(limits.cpu_s), "memory_bytes": memory,
        "address_space_bytes": 4 * memory + (1 << 30), "file_bytes": limits.max_file_mb << 20,
        "open_files": limits.max_open_files, "init_shim": iso.pid_namespace,
        "nproc": _tasks_of_user() + limits.max_processes + _THREAD_ALLOWANCE if iso.nproc_enforced else None,
    }  # fmt: skip
    return json.dumps(config)


def _child_env(workdir: str) -> dict[str, str]:
    """A minimal environment: nothing of the parent's (API keys, tokens) reaches the code."""
    one_thread = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "MPLBACKEND": "Agg", "MPLCONFIGDIR": workdir, **one_thread}  # fmt: skip


def _tasks_of_user() -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) of this real uid now."""
    uid, count = str(os.getuid()), 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [uid]:
            count += int(fields.get("Threads", "1"))
    return count


def _remove(workdir: str) -> None:
    def make_writable_and_retry(func, path, _exc):  # the code may have chmod-ed a folder to 000
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path):
            os.chmod(path, 0o700)
        func(path)

    try:
        shutil.rmtree(workdir, onerror=make_writable_and_retry)
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)
