"""Pure-PyTorch selective scan (the S6 recurrence of Mamba) for the visual-Mamba zoo models.

The recurrence, per channel ``d`` and state ``n`` (Gu & Dao, "Mamba", 2023)::

    dt_t  = softplus(delta_t + delta_bias)           (optional softplus / bias)
    h_t   = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
    y_t   = sum_n C_t[n] * h_t[n] + D[d] * u_t

The official MobileMamba / EfficientVMamba code runs this in CUDA-only kernels.  Here it runs
in plain PyTorch, in a *chunked* form that needs no data-dependent control flow, so it traces
and exports to ONNX (the two short loops are unrolled at export time):

1. the sequence is cut into ``n_chunks`` chunks of ``chunk`` steps (zero padded at the end;
   a zero step has decay 1 and input 0, so it changes nothing);
2. every chunk is scanned from a zero state, all chunks at once (``chunk`` steps);
3. the state entering each chunk is carried across chunks (``n_chunks`` steps) and added back,
   decayed by the cumulative in-chunk decay ``exp(cumsum(dt * A))`` (exponent <= 0: stable).

With ``chunk ~ sqrt(L)`` both loops take about ``sqrt(L)`` steps instead of ``L``.
:func:`selective_scan_reference` is the naive one-step-at-a-time loop the tests compare against.

Cost: the scan has no matrix multiplies, so slimkit's MAC counter (conv/linear/matmul only) does
not count it.  The papers add ``9 * L * D * N (+ L * D for the D skip)`` per image for it (the
estimate from state-spaces/mamba issue 110 that both official repositories use); this module's
:func:`scan_flops` gives the same number so the docs can compare like with like.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["selective_scan", "selective_scan_reference", "scan_flops"]


def _prepare(
    u: torch.Tensor,
    delta: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply bias/softplus to delta and broadcast grouped B, C to every channel: (b, d, L, n)."""
    if delta_bias is not None:
        delta = delta + delta_bias.view(1, -1, 1)
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    if d % groups:
        raise ValueError(f"{d} channels do not split into {groups} groups")
    # (b, g, n, L) -> (b, g, d/g, L, n) -> (b, d, L, n); view/expand keeps it ONNX friendly
    shape = (b, groups, d // groups, length, n)
    b_full = B.transpose(-1, -2).unsqueeze(2).expand(shape).reshape(b, d, length, n)
    c_full = C.transpose(-1, -2).unsqueeze(2).expand(shape).reshape(b, d, length, n)
    return delta, b_full, c_full


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    chunk: int | None = None,
) -> torch.Tensor:
    """Chunked selective scan; returns y (b, d, L).

    Shapes: u, delta (b, d, L); A (d, n); B, C (b, g, n, L) with g groups sharing B/C over
    d/g consecutive channels each; D, delta_bias (d,).  ``chunk`` defaults to ceil(sqrt(L)).
    """
    b, d, length = u.shape
    n = A.shape[1]
    delta, b_full, c_full = _prepare(u, delta, B, C, delta_bias, delta_softplus)
    step = chunk or max(1, math.ceil(math.sqrt(length)))
    n_chunks = math.ceil(length / step)
    pad = n_chunks * step - length
    log_decay = delta.unsqueeze(-1) * A.view(1, d, 1, n)  # (b, d, L, n), <= 0 for A < 0
    drive = (delta * u).unsqueeze(-1) * b_full  # (b, d, L, n)
    if pad:
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
        drive = F.pad(drive, (0, 0, 0, pad))
    log_decay = log_decay.view(b, d, n_chunks, step, n)
    drive = drive.view(b, d, n_chunks, step, n)

    # 2. every chunk from a zero state, all chunks in parallel
    decay = torch.exp(log_decay)
    h = torch.zeros_like(drive[:, :, :, 0])
    local = []
    for t in range(step):
        h = decay[:, :, :, t] * h + drive[:, :, :, t]
        local.append(h)
    states = torch.stack(local, dim=3)  # (b, d, chunks, step, n)

    # 3. carry the state across chunks, then add it back decayed from the chunk start
    from_start = torch.exp(torch.cumsum(log_decay, dim=3))
    carry = torch.zeros_like(states[:, :, 0, 0])
    entering = []
    for c in range(n_chunks):
        entering.append(carry)
        carry = from_start[:, :, c, -1] * carry + states[:, :, c, -1]
    states = states + from_start * torch.stack(entering, dim=2).unsqueeze(3)

    states = states.reshape(b, d, n_chunks * step, n)[:, :, :length]
    y = (states * c_full).sum(-1)
    if D is not None:
        y = y + D.view(1, -1, 1) * u
    return y


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The naive sequential recurrence, one step at a time (for tests only: slow)."""
    delta, b_full, c_full = _prepare(u, delta, B, C, delta_bias, delta_softplus)
    b, d, length = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    out = []
    for t in range(length):
        dt = delta[:, :, t : t + 1]
        h = torch.exp(dt * A) * h + dt * b_full[:, :, t] * u[:, :, t : t + 1]
        out.append((h * c_full[:, :, t]).sum(-1))
    y = torch.stack(out, dim=-1)
    if D is not None:
        y = y + D.view(1, -1, 1) * u
    return y


def scan_flops(batch: int, length: int, channels: int, d_state: int, with_d: bool = True) -> int:
    """The papers' cost estimate of one selective scan: 9*B*L*D*N (+ B*D*L with the D skip)."""
    flops = 9 * batch * length * channels * d_state
    return flops + (batch * channels * length if with_d else 0)
