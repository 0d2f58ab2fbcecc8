"""GPU peak throughput, for MFU and for pricing offers. No torch: the launcher uses it."""

from __future__ import annotations

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, from the vendors' datasheets.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,  # an unnamed H100 variant: assume the slower PCIe part
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 6000 Ada": 364.0,
    "RTX A6000": 155.0,
    "RTX 5090": 209.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,  # fp16; V100 has no bf16
    "T4": 65.0,  # fp16
}

ALIASES = {"H100 80GB HBM3": "H100 SXM"}  # how the SXM board names itself to CUDA


def gpu_model(name: str) -> str | None:
    """The PEAK_TFLOPS key for a device name: CUDA's 'NVIDIA H100 80GB HBM3' and Vast's 'H100 SXM' agree."""
    for alias, key in ALIASES.items():
        if alias.lower() in name.lower():
            return key
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return key
    return None


def peak_flops(name: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s for a device name such as 'NVIDIA H100 80GB HBM3', None when unknown."""
    if override_tflops:
        return override_tflops * 1e12
    model = gpu_model(name)
    return PEAK_TFLOPS[model] * 1e12 if model else None
