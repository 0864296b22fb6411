"""Step time, examples/s, model FLOP/s per device and MFU.

Model FLOPs per step come from XLA's cost analysis of the compiled train step (so they count what
the compiler will run, remat recomputation included), divided over the devices the step runs on.
Peaks are dense bf16 TFLOP/s per chip; MFU is reported only where the device kind is known.
"""

from __future__ import annotations

import time

import jax

PEAK_BF16_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "A100": 312.0,
    "H100": 989.0,
    "H200": 989.0,
}


def peak_tflops(device: jax.Device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for name, peak in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in kind.lower():
            return peak
    return None


def compiled_flops(compiled) -> float | None:
    """Total FLOPs of one call of a compiled function, from XLA's cost analysis."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class Throughput:
    """Rates over the interval since the previous `report` (call after a device sync)."""

    def __init__(self, *, batch_size: int, flops_per_step: float | None, num_devices: int):
        self.batch_size = batch_size
        self.flops_per_step = flops_per_step
        self.num_devices = num_devices
        self.peak = peak_tflops(jax.devices()[0])
        self._last_time = None
        self._last_step = None

    def start(self, step: int) -> None:
        self._last_time, self._last_step = time.perf_counter(), step

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = step - self._last_step
        elapsed = now - self._last_time
        self._last_time, self._last_step = now, step
        if steps <= 0 or elapsed <= 0:
            return {}
        rates = {"steps_per_sec": steps / elapsed, "step_time_ms": 1e3 * elapsed / steps,
                 "examples_per_sec": steps * self.batch_size / elapsed}
        if self.flops_per_step:
            tflops = self.flops_per_step * steps / elapsed / self.num_devices / 1e12
            rates["tflops_per_device"] = tflops
            if self.peak:
                rates["mfu"] = tflops / self.peak
        return rates
