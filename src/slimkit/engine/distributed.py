"""Data-parallel scale-out: torchrun launch, process-group setup, and rank bookkeeping.

`slimkit train ... --nproc N` re-runs the same command under torch.distributed.run;
each process sees WORLD_SIZE/RANK in its environment and fit() joins the group
(gloo on CPU, nccl on GPU). The global batch is split evenly over the ranks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from slimkit.errors import BadInputError, SlimkitError

__all__ = ["DistContext", "setup_distributed", "launch_torchrun", "strip_nproc", "allreduce_mean_", "param_digest",
           "gather_objects", "in_torchrun", "sync_buffers_"]

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # fit() created the process group, so fit() tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BadInputError(f"device {preference!r} requested but CUDA is not available")
    if preference.startswith("cuda:"):
        return torch.device(preference)
    return torch.device("cuda", local_rank)


def setup_distributed(device_preference: str = "auto") -> DistContext:
    """Join the torchrun process group when launched by torchrun; otherwise a single-process context."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device_preference, local_rank)
    if not in_torchrun():
        return DistContext(device=device)
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def allreduce_mean_(tensors: Iterable[torch.Tensor], ctx: DistContext) -> None:
    """Average tensors over ranks in place (for gradients of modules outside the DDP wrapper)."""
    if not ctx.distributed:
        return
    for t in tensors:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        t.div_(ctx.world_size)


def sync_buffers_(model: nn.Module, ctx: DistContext) -> None:
    """Make every rank's buffers equal (in place): floating ones averaged, the rest taken from rank 0.

    Each rank's BatchNorm running statistics follow its own slice of the global batch
    (DDP runs with broadcast_buffers=False). Averaging them is exact for the running mean
    (an average of the slices' exponential averages is the exponential average of the
    global batch means) and, for the running variance, the average of the slices' variances.
    """
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            torch.distributed.all_reduce(buffer)
            buffer.div_(ctx.world_size)
        else:
            torch.distributed.broadcast(buffer, src=0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (just [obj] in a single process)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def param_digest(model: nn.Module) -> str:
    """sha256 over every state tensor's bytes: equal digests mean bit-identical weights (and buffers)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        # reshape(-1) first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes.
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """The command line without its --nproc option (the children must not launch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def _first_error_line(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if line.startswith("error: "):
            return line[len("error: "):]
    return None


def launch_torchrun(argv: Sequence[str], nproc: int) -> None:
    """Run `slimkit ARGV` in `nproc` processes via torch.distributed.run; raise SlimkitError on failure."""
    if nproc < 1:
        raise BadInputError(f"--nproc must be >= 1, got {nproc}")
    env = dict(os.environ)
    # Split the cores between the ranks rather than letting each one claim them all.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc-per-node={nproc}", "-m", "slimkit.cli.main", *strip_nproc(argv)]
    log.info("launching: %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
    if proc.returncode == 0:
        if proc.stderr:
            sys.stderr.write(proc.stderr)
        return
    message = _first_error_line(proc.stderr)
    if message is None:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        message = f"distributed run failed with exit code {proc.returncode}: {tail[0]}"
    raise SlimkitError(message)
