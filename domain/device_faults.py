"""Reading a device fault out of an engine's last words.

An engine whose NPU or GPU fails logs the runtime's error and exits: vLLM-Ascend with the ACL
error (``EZ9999``, ``507035`` ..., ``aclrtSetDevice failed``, an HBM ECC error, ``NPU 3 ...
fault``), vLLM on CUDA with ``CUDA error: ...``, ``cudaErrorECCUncorrectable`` or an Xid,
aif's simulator (``POST /admin/faults {"device_fault": true}``) with ``device fault on NPU 3``.
:func:`find_device_fault` finds that line in the tail of a log (a local engine's log file, or a
pod's termination message) and the device it names when it names one. Shared by the local
deployer and the Kubernetes one; what to do about a fault (quarantine, replacement) is theirs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Lines that mean the card itself failed, not the engine's code. ``device`` is the card's id
# when the line names one.
_PATTERNS = (
    re.compile(r"device fault on (?:NPU|GPU) (?P<device>\d+)[^\n]*"),
    re.compile(r"(?:ACL|aclrt\w*)[^\n]*error code[: ]*(?:507035|507053|507054|507899)[^\n]*"),
    re.compile(r"EZ9999[^\n]*device[^\n]*"),
    re.compile(r"aclrtSetDevice failed(?:[^\n]*?device[ _]?id[ =:]*(?P<device>\d+))?[^\n]*"),
    re.compile(r"HBM[^\n]*ECC[^\n]*", re.IGNORECASE),
    re.compile(r"NPU[ :#]*(?P<device>\d+)?[^\n]*\bfault[^\n]*"),
    re.compile(
        r"CUDA error: (?:uncorrectable ECC error|unspecified launch failure|"
        r"an illegal memory access)[^\n]*"
    ),
    re.compile(r"cudaErrorECCUncorrectable[^\n]*"),
    re.compile(r"Xid (?:\(PCI:[^)]*\): )?\d+[^\n]*"),
    re.compile(r"\bdevice error\b[^\n]*", re.IGNORECASE),
)


@dataclass(frozen=True)
class DeviceFault:
    line: str
    device: int | None  # the card's id, when the error names it


def find_device_fault(log_tail: str) -> DeviceFault | None:
    """The last device-fault line in ``log_tail``, with the device the last line naming one
    names (runtimes often name the card first, then fail on it in general terms); None when
    the engine failed otherwise."""
    found: DeviceFault | None = None
    for line in reversed(log_tail.splitlines()):
        matches = [m for m in (p.search(line) for p in _PATTERNS) if m is not None]
        if not matches:
            continue
        named = next((m["device"] for m in matches if m.groupdict().get("device")), None)
        if found is None:
            text = min(matches, key=lambda m: m.start()).group(0).strip()
            found = DeviceFault(text, None)
        if named is not None:
            return DeviceFault(found.line, int(named))
    return found
