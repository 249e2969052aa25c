"""The sandbox's child side: limits, refusals, then the user's code (run by `sandbox.py`, never imported).

The parent starts ``python -I -B -X utf8 -c <this file's text> <config json>`` in a fresh temporary
directory that holds the user's code as ``main.py``. Before that code runs, this bootstrap

- in a PID namespace, forks once and stays behind as the namespace's first process (see `_init_shim`);
- sets the kernel limits (RLIMIT_CPU, RLIMIT_DATA, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE,
  and RLIMIT_NPROC when the parent asks for it);
- installs an audit hook (PEP 578) that refuses, with a `SandboxViolation` (a PermissionError):
  sockets and name lookups (network); starting or signalling other processes (process); ctypes'
  foreign calls and library loads (native); the gc's object walks that could reach the hook (introspection);
  reading outside the working directory and the Python installation's import paths, and writing
  or changing anything outside the working directory (file);
- turns SIGXCPU (the soft CPU limit) into a `CpuLimitExceeded` raised in the main thread.

The hook stops code that uses Python's ordinary APIs; it is not a security boundary (CPython says so
of audit hooks: code that reaches a fresh copy of an extension module, or native code, gets past it).
The kernel limits, the namespaces and the parent's watchdog are what hold against such code.

Status goes to the parent on a pipe (fd in the config), one JSON object a line: ``{"cpu": true}`` when
the CPU limit is hit, and at the end ``{"end": kind, ...}`` with kind one of ok, exit, exception,
memory, forbidden, cpu, plus the operations the hook refused; ``{"signal": N}`` from the PID
namespace's first process when the code died by signal N.
"""

import json
import os
import resource
import signal
import sys
import traceback


class SandboxViolation(PermissionError):
    """An operation the sandbox refuses; `what` is network, process, native, introspection or file."""

    def __init__(self, what: str, message: str):
        super().__init__(f"sandbox: {message}")
        self.what = what


class CpuLimitExceeded(BaseException):
    """Raised in the main thread at the soft CPU-time limit (a BaseException: `except Exception` misses it)."""


_PROCESS_EVENTS = frozenset({
    "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
    "os.killpg", "subprocess.Popen", "pty.spawn",
})  # fmt: skip
_INTROSPECTION_EVENTS = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents"})
_WRITE_EVENTS = {  # event -> indexes of its path arguments
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.chflags": (0,), "os.utime": (0,),
    "os.truncate": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,),
}  # fmt: skip
_LIST_EVENTS = {"os.listdir": 0, "os.scandir": 0, "os.listxattr": 0, "os.getxattr": 0, "glob.glob": 0}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def _set_limits(config: dict) -> None:
    def limit(which: int, soft: int, hard: int | None = None) -> None:
        resource.setrlimit(which, (soft, soft if hard is None else hard))

    limit(resource.RLIMIT_CPU, config["cpu_s"], config["cpu_s"] + 1)  # SIGXCPU, then SIGKILL 1 s later
    limit(resource.RLIMIT_DATA, config["memory_bytes"])
    limit(resource.RLIMIT_AS, config["address_space_bytes"])
    limit(resource.RLIMIT_FSIZE, config["file_bytes"])
    limit(resource.RLIMIT_NOFILE, config["open_files"])
    limit(resource.RLIMIT_CORE, 0)
    if config.get("nproc"):
        limit(resource.RLIMIT_NPROC, config["nproc"])


def _real(path, cwd: str) -> str:
    path = os.fsdecode(os.fspath(path))
    return os.path.realpath(os.path.join(cwd, path))


def _inside(path: str, roots: tuple) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def _install_hook(workdir: str, read_roots: tuple, refused: list) -> None:
    """The audit hook; nothing outside this function keeps a reference to it or its state but `refused`."""
    own_pid = os.getpid()
    write_roots = (workdir,)
    read_roots = (workdir, *read_roots)

    def refuse(what: str, message: str) -> None:
        refused.append(f"{what}: {message}")
        raise SandboxViolation(what, message)

    def check_path(event: str, path, writing: bool) -> None:
        if path is None or isinstance(path, int):  # an fd already open
            return
        try:
            real = _real(path, os.getcwd())
        except (OSError, TypeError, ValueError):
            return
        if real in _DEVICES:
            return
        if writing and not _inside(real, write_roots):
            refuse("file", f"writing {real} is not allowed: only the working directory can be written ({event})")
        if not writing and not _inside(real, read_roots):
            refuse("file", f"reading {real} is not allowed: only the working directory and the Python "
                   f"installation can be read ({event})")  # fmt: skip

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = bool(flags & _WRITE_FLAGS) if isinstance(flags, int) else any(c in (mode or "") for c in "wax+")
            check_path(event, path, writing)
        elif event in _LIST_EVENTS:
            check_path(event, args[0] if args else ".", False)
        elif event in _WRITE_EVENTS:
            for i in _WRITE_EVENTS[event]:
                check_path(event, args[i], True)
        elif event.startswith("socket.") and event != "socket.gethostname":
            refuse("network", f"network access is not allowed ({event})")
        elif event in _PROCESS_EVENTS or (event == "os.kill" and args[0] not in (own_pid, 0)):
            refuse("process", f"starting or signalling processes is not allowed ({event})")
        elif event in ("ctypes.dlsym", "ctypes.call_function") or (event == "ctypes.dlopen" and args[0] is not None):
            refuse("native", f"calling native code through ctypes is not allowed ({event})")
        elif event in _INTROSPECTION_EVENTS:
            refuse("introspection", f"{event} is not allowed")

    sys.addaudithook(hook)


def _disarm_posixsubprocess() -> None:
    # Popen is refused by the hook; this takes away the direct route to fork+exec as well (the
    # module object is cached, so `import _posixsubprocess` later gets this one).
    import _posixsubprocess

    def fork_exec(*args, **kwargs):
        raise SandboxViolation("process", "starting or signalling processes is not allowed (fork_exec)")

    _posixsubprocess.fork_exec = fork_exec


def _on_sigxcpu(status_fd: int):
    def handler(signum, frame):
        _send(status_fd, {"cpu": True})
        raise CpuLimitExceeded("CPU time limit reached")

    return handler


def _send(fd: int, message: dict) -> None:
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
    except OSError:
        pass  # the user's code closed it; the parent falls back on the exit status


def _print_user_traceback(exc: BaseException) -> None:
    """The traceback without this bootstrap's frames (the hook's, the exec's): the user's code and libraries."""
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    report.stack = traceback.StackSummary.from_list([f for f in report.stack if f.filename != "<string>"])
    sys.stderr.write("".join(report.format()))


def _violation_in(exc: BaseException | None) -> SandboxViolation | None:
    """The refusal that `exc` is, or wraps (urllib turns it into a URLError, for one)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SandboxViolation):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _end_kind(exc: BaseException) -> tuple[str, dict]:
    violation = _violation_in(exc)
    if violation is not None:
        return "forbidden", {"what": violation.what, "message": str(violation)}
    if isinstance(exc, MemoryError):
        return "memory", {"message": "MemoryError"}
    if isinstance(exc, CpuLimitExceeded):
        return "cpu", {"message": str(exc)}
    return "exception", {"message": f"{type(exc).__name__}: {exc}"[:500]}


def _init_shim(status_fd: int) -> None:
    """Stay behind as the PID namespace's first process and run the code in a child; returns in the child.

    The kernel drops signals that the namespace's first process has no handler for, even its own
    (``os.kill(os.getpid(), 9)``, an ``alarm()`` without handler); the code should not live in that role.
    The exit status goes up as is; a death by signal N as ``{"signal": N}`` on the status pipe (and 128 + N).
    """
    child = os.fork()
    if child == 0:
        return
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(1)
    if os.WIFSIGNALED(status):
        _send(status_fd, {"signal": os.WTERMSIG(status)})
    os._exit(min(128 + os.WTERMSIG(status), 255) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status))


def main() -> None:
    config = json.loads(sys.argv[1])
    status_fd, workdir = config["status_fd"], os.path.realpath(config["workdir"])
    if config.get("init_shim"):
        _init_shim(status_fd)
    read_roots = tuple(os.path.realpath(p) for p in sys.path if p and os.path.exists(p))
    with open(os.path.join(workdir, "main.py"), encoding="utf-8") as f:
        source = f.read()
    code = compile(source, "main.py", "exec")
    _disarm_posixsubprocess()
    os.chdir(workdir)
    sys.path.insert(0, workdir)
    sys.argv = ["main.py"]
    signal.signal(signal.SIGXCPU, _on_sigxcpu(status_fd))
    _set_limits(config)
    refused: list = []
    _install_hook(workdir, read_roots, refused)
    namespace = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    end, detail, exit_code = "ok", {}, 0
    try:
        exec(code, namespace)
    except SystemExit as e:
        end, exit_code = "exit", e.code
    except BaseException as e:  # noqa: BLE001 - every failure of the user's code is reported, none raised
        end, detail = _end_kind(e)
        _print_user_traceback(e)
        exit_code = 1
    _send(status_fd, {"end": end, "refused": refused[:20], **detail})
    raise SystemExit(exit_code)


if __name__ == "__main__":
    main()
