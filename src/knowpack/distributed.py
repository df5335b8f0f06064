"""Data-parallel helpers for runs under `accelerate launch` (or `torchrun`): rank, world size, gather.

    accelerate launch --num_processes 2 --cpu -m knowpack.cli attribute --model M --prompts P --out S

Every process runs the same command. Training splits each batch over the processes (DDP through
`accelerate.Accelerator`, see `train.py`); attribution gives every process every world-th prompt and
gathers the scores back in input order (`gather_strided`). Only rank zero prints, logs at INFO and
shows progress bars (`is_main`), and files that one process can write alone are written by rank zero.

Rank and world size are read from the launcher's environment (`RANK`, `WORLD_SIZE`), so asking for
them never starts a process group; the group is started (through accelerate's `PartialState`, gloo
on CPUs, NCCL on GPUs) only when a collective is needed.
"""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    """Number of processes of this launch (1 when not launched by accelerate/torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    """This process's global rank (0 when not launched)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    return rank() == 0


def _use_cpu(cpu: bool | None) -> bool:
    if cpu is not None:
        return cpu
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or not torch.cuda.is_available()


def _group(cpu: bool | None = None):
    """The initialised process group's device, starting it through accelerate when needed."""
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=_use_cpu(cpu))
    backend = dist.get_backend()
    if "nccl" in str(backend):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(cpu: bool | None = None) -> None:
    if world_size() > 1:
        import torch.distributed as dist

        _group(cpu)
        dist.barrier()


def all_agree(flag: bool, cpu: bool | None = None) -> bool:
    """True on every process when `flag` is true on every process (so all take the same branch)."""
    if world_size() == 1:
        return flag
    import torch.distributed as dist

    device = _group(cpu)
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_strided(part: torch.Tensor, total: int, cpu: bool | None = None) -> torch.Tensor:
    """Reassemble rows split as `items[rank::world]`: every process gets all `total` rows, in order.

    `part` holds this process's rows (its share of the items, in order); the result is on the CPU.
    """
    world = world_size()
    if world == 1:
        return part
    import torch.distributed as dist

    device = _group(cpu)
    most = -(-total // world)
    padded = part.new_zeros((most, *part.shape[1:]))
    padded[: part.shape[0]] = part
    padded = padded.to(device)
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    out = part.new_empty((total, *part.shape[1:]))
    for r, piece in enumerate(pieces):
        n = len(range(r, total, world))
        out[r::world] = piece[:n].to(out.device)
    return out
