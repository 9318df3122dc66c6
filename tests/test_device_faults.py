"""Device errors as the runtimes print them, told from the engine's own failures."""

from __future__ import annotations

import pytest

from domain.device_faults import DeviceFault, find_device_fault


@pytest.mark.parametrize(
    ("log", "line", "device"),
    [
        # NVIDIA: the kernel's Xid, CUDA's ECC error, the runtime's error enum.
        ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1906, GPU has fallen off the bus.",
         "Xid (PCI:0000:3b:00): 79, pid=1906, GPU has fallen off the bus.", None),
        ("RuntimeError: CUDA error: uncorrectable ECC error encountered\nCUDA kernel errors "
         "might be asynchronously reported", "CUDA error: uncorrectable ECC error encountered",
         None),
        ("torch.cuda.CudaError: cudaErrorECCUncorrectable: uncorrectable ECC error",
         "cudaErrorECCUncorrectable: uncorrectable ECC error", None),
        # Ascend: the ACL runtime, HBM ECC, the NPU's own fault report.
        ("[ERROR] RUNTIME(1873,python3):2026-12-08-00:41:09 [device.cc:386] aclrtSetDevice "
         "failed, device id=3, error code 507033",
         "aclrtSetDevice failed, device id=3, error code 507033", 3),
        ("EE9999: Inner Error!\nE39999: HBM multi-bit ECC error detected on chip 0",
         "HBM multi-bit ECC error detected on chip 0", None),
        ("[ERROR] dsmi: NPU 5 heartbeat lost, device fault reported",
         "NPU 5 heartbeat lost, device fault reported", 5),
        ("RuntimeError: npu synchronize failed: device error, error code is 507035",
         "device error, error code is 507035", None),
        # aif's simulator.
        ("device fault on NPU 2: injected", "device fault on NPU 2: injected", 2),
    ],
)  # fmt: skip
def test_device_errors_are_recognised(log: str, line: str, device: int | None) -> None:
    assert find_device_fault(log) == DeviceFault(line, device)


def test_the_last_fault_line_is_kept_with_the_device_an_earlier_one_named() -> None:
    log = (
        "aclrtSetDevice failed, device id=1, error code 507033\n"
        "RuntimeError: ACL stream synchronize failed, error code:507053\n"
    )
    assert find_device_fault(log) == DeviceFault(
        "ACL stream synchronize failed, error code:507053", 1
    )


@pytest.mark.parametrize(
    "log",
    [
        "ValueError: The model's max seq len (32768) is larger than the KV cache (20480)",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "FileNotFoundError: /workspace/Qwen/config.json",
        "",
    ],
)
def test_failures_of_the_engine_itself_are_not_device_faults(log: str) -> None:
    assert find_device_fault(log) is None
