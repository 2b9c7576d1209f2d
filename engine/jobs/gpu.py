"""GPU statistics from NVML (nvidia-ml-py): VRAM, utilisation, temperature, power.

On a machine without an NVIDIA driver (or without the package) :func:`sample_gpus` returns an
empty list: no GPU is a normal state, not an error.
"""

from __future__ import annotations

_initialised: bool | None = None


def _init() -> bool:
    global _initialised
    if _initialised is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _initialised = True
        except Exception:  # no driver, no library, no permission: no GPU stats
            _initialised = False
    return _initialised


def sample_gpus() -> list[dict]:
    """One dict per GPU: index, name, used_mb, total_mb, util (%), temp (°C), power_w,
    processes ({pid: used_mb}). Empty without NVML."""
    if not _init():
        return []
    import pynvml

    out = []
    try:
        count = pynvml.nvmlDeviceGetCount()
    except Exception:
        return []
    for index in range(count):
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            sample = {
                "index": index,
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "used_mb": memory.used / 2**20,
                "total_mb": memory.total / 2**20,
                "util": _maybe(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                "temp": _maybe(lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
                "power_w": _maybe(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
                "processes": {},
            }
            for proc in _maybe(lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []:
                if proc.usedGpuMemory is not None:
                    sample["processes"][proc.pid] = proc.usedGpuMemory / 2**20
            out.append(sample)
        except Exception:
            continue
    return out


def _maybe(read):
    try:
        return read()
    except Exception:  # e.g. power readings are not supported on every board
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
