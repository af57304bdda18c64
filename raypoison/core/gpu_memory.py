"""How much of a shared GPU's memory one process may take (plain arithmetic, no Ray: the device
check uses it where Ray is not installed)."""

from __future__ import annotations

# what each process's CUDA context and kernels take outside PyTorch's allocator (about 0.3-0.5
# GB on recent GPUs): a memory share leaves it out, so k shares of 1/k fit on the card together
CONTEXT_BYTES = 512 * 2**20
# a feature bank on the CPU: the machine's memory, not a device's, bounds it
CPU_BANK_BYTES = 4 * 2**30


def memory_share(gpu_fraction: float, total_bytes: int) -> float:
    """The fraction of the GPU's memory to cap PyTorch's allocator at for a process holding
    ``gpu_fraction`` of the GPU: its share less its CUDA context, so that the processes packed on
    one GPU fit with their contexts (four at 0.25 would otherwise ask for the whole card plus
    four contexts). Never below a tenth of the share."""
    share = gpu_fraction - CONTEXT_BYTES / total_bytes
    return max(share, gpu_fraction / 10)


def bank_limit(device: str, memory_cap: float | None, total_bytes: int | None) -> int:
    """What the feature banks of a scenario's victims may take together in one process, in
    bytes: on a GPU half of what its allocator may take (``memory_cap`` of ``total_bytes``, the
    whole card where uncapped), leaving the rest to the data, the models, the poisons and the
    activations of training; on the CPU :data:`CPU_BANK_BYTES`. Trials whose banks would not fit
    run the extractor instead, with the same results, only slower. (A worker holding several
    scenarios' contexts, ``max_contexts`` > 1, holds their banks too.)"""
    if device == "cpu" or total_bytes is None:
        return CPU_BANK_BYTES
    return int((1.0 if memory_cap is None else memory_cap) * total_bytes / 2)
