"""`python -m tests.seccomp_exec UNIT -- PROGRAM ARGS...`: run a program under the unit's system-call policy.

Emulates what systemd applies for the unit's `SystemCallFilter=` lines (groups expanded by
`systemd-analyze syscall-filter`), `SystemCallArchitectures=native`, `MemoryDenyWriteExecute=` (W+X
mmap, mprotect/pkey_mprotect adding PROT_EXEC, shmat with SHM_EXEC) and `NoNewPrivileges=`, with
`SystemCallErrorNumber=EPERM`, through libseccomp, then execs the program. So the tests can run the agent
and everything it starts under the policy without a booted systemd.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
SHM_EXEC = 0o100000


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    return set().union(*(expand(member, groups) for member in groups[name]))


def unit_policy(unit: Path) -> tuple[set[str], bool]:
    """The allowed system calls (allow-list lines, minus `~` lines) and whether W^X is enforced."""
    groups = syscall_groups()
    allowed: set[str] = set()
    denied: set[str] = set()
    mdwe = False
    for line in unit.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key == "SystemCallFilter":
            target = denied if value.startswith("~") else allowed
            for name in value.removeprefix("~").split():
                target |= expand(name, groups)
        elif key == "MemoryDenyWriteExecute":
            mdwe = value.lower() in ("yes", "true", "1", "on")
    return allowed - denied, mdwe


def load(unit: Path) -> None:
    allowed, mdwe = unit_policy(unit)
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    eperm = act_errno(errno.EPERM)

    def rule(ctx: int, action: int, name: str, cmp: ArgCmp | None = None) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr >= 0:  # not a system call of this architecture
            args = (1, ctypes.byref(cmp)) if cmp is not None else (0, None)
            if lib.seccomp_rule_add_array(ctx, action, nr, *args) != 0:
                raise OSError(f"seccomp_rule_add {name} failed")

    if mdwe:  # loaded first: the allow-list below does not allow seccomp() itself
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        rule(ctx, eperm, "mmap", ArgCmp(2, SCMP_CMP_MASKED_EQ, wx, wx))
        for name in ("mprotect", "pkey_mprotect"):
            rule(ctx, eperm, name, ArgCmp(2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
        rule(ctx, eperm, "shmat", ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        if lib.seccomp_load(ctx) != 0:
            raise OSError("seccomp_load (MemoryDenyWriteExecute) failed")
    ctx = lib.seccomp_init(eperm)  # the native architecture only, NO_NEW_PRIVS set on load
    for name in sorted(allowed):
        rule(ctx, SCMP_ACT_ALLOW, name)
    if lib.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load (SystemCallFilter) failed")


def main() -> None:
    unit, sep, *argv = sys.argv[1:]
    assert sep == "--" and argv, __doc__
    load(Path(unit))
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
