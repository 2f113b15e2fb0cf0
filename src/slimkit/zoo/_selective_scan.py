"""Pure-PyTorch selective scan (the S6 recurrence of Mamba) for the visual-Mamba zoo models.

The recurrence, per channel ``d`` and state ``n`` (Gu & Dao, "Mamba", 2023)::

    dt_t  = softplus(delta_t + delta_bias)           (optional softplus / bias)
    h_t   = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
    y_t   = sum_n C_t[n] * h_t[n] + D[d] * u_t

The official MobileMamba / EfficientVMamba code runs this in CUDA-only kernels.  Here it runs
in plain PyTorch, in a *chunked* form that needs no data-dependent control flow, so it traces
and exports to ONNX (the two short loops are unrolled at export time):

1. the sequence is cut into ``n_chunks`` chunks of ``chunk`` steps (padded at the end with
   steps of decay 1 and input 0, which change nothing);
2. every chunk is scanned from a zero state, all chunks at once (``chunk`` steps), keeping the
   running product of the decays since the chunk start (factors in (0, 1]: stable);
3. the state entering each chunk is carried across chunks (``n_chunks`` steps) and added back,
   multiplied by that running decay.

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
    """Apply bias/softplus to delta; B, C as (b, g, 1, L, n) to broadcast over each group's channels."""
    if delta_bias is not None:
        delta = delta + delta_bias.view(1, -1, 1)
    if delta_softplus:
        delta = F.softplus(delta)
    d, groups = u.shape[1], B.shape[1]
    if d % groups:
        raise ValueError(f"{d} channels do not split into {groups} groups")
    return delta, B.transpose(-1, -2).unsqueeze(2), C.transpose(-1, -2).unsqueeze(2)


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
    n, groups = A.shape[1], B.shape[1]
    delta, _, _ = _prepare(u, delta, B, C, delta_bias, delta_softplus)
    step = chunk or max(1, math.ceil(math.sqrt(length)))
    n_chunks = math.ceil(length / step)
    pad = n_chunks * step - length
    if pad:  # padded steps have delta 0: decay exp(0) = 1 and input 0, so they change nothing
        delta, u, B, C = (F.pad(t, (0, pad)) for t in (delta, u, B, C))
    # time-in-chunk first, so every loop step below reads and writes contiguous memory
    dg = d // groups

    def steps_first(t: torch.Tensor) -> torch.Tensor:  # (b, g, k, L) -> (step, b, g, k, chunks)
        return t.reshape(b, groups, -1, n_chunks, step).permute(4, 0, 1, 2, 3)

    dt = steps_first(delta.reshape(b, groups, dg, -1)).unsqueeze(-1)  # (step, b, g, dg, chunks, 1)
    x = steps_first((delta * u).reshape(b, groups, dg, -1)).unsqueeze(-1)
    b_t = steps_first(B).transpose(3, 4).unsqueeze(3)  # (step, b, g, 1, chunks, n)
    c_t = steps_first(C).transpose(3, 4).unsqueeze(3)
    decay = torch.exp(dt * A.view(1, 1, groups, dg, 1, n))  # (step, b, g, dg, chunks, n), in (0, 1]
    drive = x * b_t

    # 2. every chunk from a zero state, all chunks in parallel; `prod` is the decay since chunk start
    h = torch.zeros_like(drive[0])
    prod = torch.ones_like(h)
    local, decays = [], []
    for t in range(step):
        h = decay[t] * h + drive[t]
        prod = prod * decay[t]
        local.append(h)
        decays.append(prod)
    states, from_start = torch.stack(local), torch.stack(decays)  # (step, b, g, dg, chunks, n)

    # 3. carry the state across chunks, then add it back decayed from the chunk start
    carry = torch.zeros_like(h[..., 0, :])
    entering = []
    for c in range(n_chunks):
        entering.append(carry)
        carry = from_start[-1, ..., c, :] * carry + states[-1, ..., c, :]
    states = states + from_start * torch.stack(entering, dim=-2)

    y = (states * c_t).sum(-1)  # (step, b, g, dg, chunks)
    y = y.permute(1, 2, 3, 4, 0).reshape(b, d, n_chunks * step)[:, :, :length]
    if D is not None:
        y = y + D.view(1, -1, 1) * u[:, :, :length]
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
    b, d, length = u.shape
    delta, b_grp, c_grp = _prepare(u, delta, B, C, delta_bias, delta_softplus)
    per_group = d // B.shape[1]
    b_full = b_grp.squeeze(2).repeat_interleave(per_group, dim=1)  # (b, d, L, n)
    c_full = c_grp.squeeze(2).repeat_interleave(per_group, dim=1)
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
