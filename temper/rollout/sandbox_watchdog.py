"""The sandbox's process watchdog: counts each sandbox's processes and kills a sandbox that has too many.

Root is not held by RLIMIT_NPROC (the kernel exempts uid 0), so the count has to be kept from outside:
one daemon thread, shared by every sandbox of this process, reads /proc every `INTERVAL_S` while a
sandbox runs. A sandbox's processes are its root process's descendants (through
/proc/<pid>/task/<tid>/children where the kernel has it, else a scan of every /proc/<pid>/stat) and
every process of its session; in a PID namespace orphans are re-parented to the namespace's first
process, so a double fork stays counted. When a sandbox has more than its `max_processes`, its whole
process group and every process counted are sent SIGKILL and `Watch.killed` says why.

The watchdog samples: between two looks a fast fork bomb can go past the limit (the sandbox's own
refusals and, for non-root users, RLIMIT_NPROC are the first line); it bounds how long such a bomb lives.
It also records the most CPU seconds seen in one process of the sandbox, so that a process killed at
the hard CPU limit (SIGKILL, which says nothing by itself) is reported as a CPU-limit kill.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

INTERVAL_S = 0.1
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass
class Watch:
    """One sandbox under watch. `root`: the pid started by the parent (session and group leader)."""

    root: int
    max_processes: int  # processes allowed at once, the user's interpreter included
    helpers: int  # the sandbox's own processes (unshare, the PID namespace's first process), not counted
    killed: str | None = None  # why the watchdog killed the sandbox, None if it did not
    peak_processes: int = 0
    max_cpu_s: float = 0.0  # most CPU seconds seen in one of its processes


@dataclass
class _Proc:
    ppid: int
    session: int
    cpu_s: float


class Watchdog:
    """The shared watcher thread (started on first use, idle while nothing is watched)."""

    def __init__(self, interval_s: float = INTERVAL_S):
        self.interval_s = interval_s
        self._watches: list[Watch] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, root: int, max_processes: int, helpers: int) -> Watch:
        w = Watch(root, max_processes, helpers)
        with self._cond:
            self._watches.append(w)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="sandbox-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return w

    def unwatch(self, w: Watch) -> None:
        with self._cond:
            if w in self._watches:
                self._watches.remove(w)

    def check(self) -> None:
        """One look at every watched sandbox (the thread's step; tests call it directly)."""
        with self._cond:
            watches = list(self._watches)
        if not watches:
            return
        table = None if _has_children_files() else _scan_proc()
        for w in watches:
            members = _members(w.root, table)
            count = max(len(members) - w.helpers, 0)
            w.peak_processes = max(w.peak_processes, count)
            w.max_cpu_s = max([w.max_cpu_s, *(_cpu_s(pid, table) for pid in members)])
            if count > w.max_processes and w.killed is None:
                w.killed = f"more than {w.max_processes} processes ({count} seen)"
                kill_all(w.root, members)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._watches:
                    self._cond.wait()
            self.check()
            time.sleep(self.interval_s)


def kill_all(root: int, members: set[int] = frozenset()) -> None:
    """SIGKILL the process group of `root` and each of `members` (gone ones are skipped).

    Safe against pid reuse for the group while any of its members lives, and for `members` within
    the few milliseconds since they were seen.
    """
    try:
        os.killpg(root, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


_children_files: bool | None = None


def _has_children_files() -> bool:
    global _children_files
    if _children_files is None:
        _children_files = os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children")
    return _children_files


def _scan_proc() -> dict[int, _Proc]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            proc = _read_stat(int(name))
            if proc is not None:
                table[int(name)] = proc
    return table


def _read_stat(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after "pid (comm)": state ppid pgrp session ... utime stime
    return _Proc(ppid=int(fields[1]), session=int(fields[3]), cpu_s=(int(fields[11]) + int(fields[12])) / _TICKS_PER_S)


def _members(root: int, table: dict[int, _Proc] | None) -> set[int]:
    if table is None:
        return _descendants_by_children_files(root)
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    members = {pid for pid, proc in table.items() if proc.session == root}
    todo = [root] if root in table else []
    while todo:
        pid = todo.pop()
        members.add(pid)
        todo.extend(c for c in children.get(pid, ()) if c not in members)
    return members


def _descendants_by_children_files(root: int) -> set[int]:
    members, todo = set(), [root]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        members.add(pid)
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split() if int(c) not in members)
            except OSError:
                pass
    return members


def _cpu_s(pid: int, table: dict[int, _Proc] | None) -> float:
    proc = table.get(pid) if table is not None else _read_stat(pid)
    return proc.cpu_s if proc is not None else 0.0


WATCHDOG = Watchdog()
