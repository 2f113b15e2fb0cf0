"""Adapters that let Torch-Pruning's dependency graph handle real model zoos without hand settings.

Each adapter recognises a module pattern by its structure (not by model name), tells the
pruner how to treat it before pruning, and fixes the module's plain attributes afterwards so
the forward works and a model directory (architecture.json) records the true shapes:

- attention with a fused `qkv` Linear and `num_heads` (timm Attention and look-alikes): head
  dimensions are pruned alike in every head (Torch-Pruning `num_heads` grouping); afterwards
  `head_dim`, `attn_dim` and `scale` follow the new width.
- modules that split their input with stored sizes (timm MixedConv2d in MixNet): sizes are re-read
  from the pruned layers. Other stored-size splits (MobileViT-v2 LinearSelfAttention's query/key/value
  split, whose key and value must shrink alike) are left to the channel-safety rules: kept whole.
- attention variants whose internals Torch-Pruning cannot map (key/value dims with position
  biases, talking heads, multi-scale linear attention, cross-covariance attention, nn.MultiheadAttention):
  protected, i.e. left at full width inside; the rest of the model is still pruned.
- leaf modules that reshape a per-channel parameter with a stored shape (timm `Scale` in MetaFormer:
  `x * self.scale.view(self.shape)`, shape = (dim, 1, 1)): the stored length is rewritten from the
  pruned parameter.
- fixed depthwise filters (timm BlurPool2d, anti-aliased downsampling: `conv2d(x, filt, groups=channels)`
  with a (channels, 1, k, k) buffer that is the same for every channel): channel-preserving, so the
  graph passes channels through; afterwards the stored count and the buffer follow the width the
  module receives (read in one forward).
- caches of derived tensors (`attention_bias_cache`) are cleared, since they hold stale shapes
  and block deep copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

__all__ = ["ModelAdapters", "analyse_model", "classifier_layers", "clear_caches", "fix_attributes", "resize_fixed_filters"]


@dataclass
class ModelAdapters:
    """What the adapters found in one model (modules are the model's own objects)."""

    num_heads: dict[nn.Module, int] = field(default_factory=dict)  # qkv Linear -> heads
    attention: list[nn.Module] = field(default_factory=list)  # adapted attention modules
    split_owners: list[nn.Module] = field(default_factory=list)  # modules whose stored split sizes we fix
    protected: list[nn.Module] = field(default_factory=list)  # modules kept at full width inside
    views: list[tuple[nn.Module, str, int, str]] = field(default_factory=list)  # (module, attr, position, param)
    filters: list[tuple[nn.Module, str, str]] = field(default_factory=list)  # (module, count attr, buffer)
    notes: list[str] = field(default_factory=list)


def _is_fused_qkv_attention(m: nn.Module) -> bool:
    qkv, heads = getattr(m, "qkv", None), getattr(m, "num_heads", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(heads, int) or heads < 1:
        return False
    head_dim = getattr(m, "head_dim", None)
    if not isinstance(head_dim, int) or qkv.out_features != 3 * heads * head_dim:
        return False
    # q/k norms and gates act on head_dim-sized slices that the graph cannot see.
    plain = all(isinstance(getattr(m, n, None), (nn.Identity, type(None))) for n in ("q_norm", "k_norm", "gate"))
    return plain and isinstance(getattr(m, "proj", None), nn.Linear)


def _is_mixed_conv(m: nn.Module) -> bool:
    return type(m).__name__ == "MixedConv2d" and isinstance(getattr(m, "splits", None), (list, tuple))


_PROTECTED_CLASS_NAMES = {"LiteMLA", "CrossCovarianceAttn"}
_PROJECTION_NAMES = {"qkv", "q", "k", "v", "kv", "qkvs", "to_qkv", "qkv_proj", "in_proj_weight", "temperature"}


def _needs_protection(m: nn.Module) -> bool:
    if isinstance(m, nn.MultiheadAttention) or type(m).__name__ in _PROTECTED_CLASS_NAMES:
        return True
    if "attention_biases" in m._parameters:  # relative position biases indexed per head
        return True
    if not isinstance(getattr(m, "num_heads", None), int):
        return False
    names = {n for n, _ in m.named_children()} | set(m._parameters)
    return bool(names & _PROJECTION_NAMES)


def stored_views(m: nn.Module) -> list[tuple[str, int, str]]:
    """(attribute, position, parameter) of the int tuples of a leaf module that spell the length of
    one of its 1-D parameters exactly once, e.g. timm Scale's `shape = (dim, 1, 1)`."""
    if next(m.children(), None) is not None:
        return []
    params = {n: p.numel() for n, p in m._parameters.items() if p is not None and p.dim() == 1 and p.numel() > 1}
    found = []
    for attr, value in vars(m).items():
        if attr.startswith("_") or not isinstance(value, (tuple, list)) or not value:
            continue
        if not all(isinstance(v, int) for v in value):
            continue
        for pname, size in params.items():
            hits = [i for i, v in enumerate(value) if v == size]
            if len(hits) == 1:
                found.append((attr, hits[0], pname))
                break
    return found


def analyse_model(model: nn.Module) -> ModelAdapters:
    """Find the attention, split and protected modules of `model`."""
    found = ModelAdapters()
    for name, m in model.named_modules():
        if any(m in p.modules() for p in found.protected):
            continue
        if _is_fused_qkv_attention(m):
            found.num_heads[m.qkv] = m.num_heads
            found.attention.append(m)
        elif _is_mixed_conv(m):
            found.split_owners.append(m)
        elif _needs_protection(m):
            found.protected.append(m)
            found.notes.append(f"{name} ({type(m).__name__}) kept at full width inside: attention internals not mappable")
        else:
            found.views.extend((m, *view) for view in stored_views(m))
            found.filters.extend((m, *f) for f in fixed_depthwise_filters(m))
    return found


def fixed_depthwise_filters(m: nn.Module) -> list[tuple[str, str]]:
    """(count attribute, buffer) of a parameter-free leaf module holding a (C, 1, ...) buffer whose
    rows are all equal and an int attribute equal to C: one fixed filter applied per channel
    (BlurPool2d's `channels` and `filt`). Equal rows make the pruned buffer independent of which
    channels were removed; a buffer with distinct rows is left alone (its forward then breaks, the
    module is named and protected)."""
    if next(m.children(), None) is not None or next(m.parameters(recurse=False), None) is not None:
        return []
    found = []
    for bname, buf in m._buffers.items():
        if buf is None or buf.dim() < 3 or buf.shape[0] < 2 or buf.shape[1] != 1 or buf.is_meta:
            continue
        if not torch.equal(buf, buf[:1].expand_as(buf)):
            continue
        attrs = [a for a, v in vars(m).items() if not a.startswith("_") and type(v) is int and v == buf.shape[0]]
        if len(attrs) == 1:
            found.append((attrs[0], bname))
    return found


def resize_fixed_filters(model: nn.Module, example_inputs: torch.Tensor, adapters: ModelAdapters) -> None:
    """Shrink each fixed depthwise filter (and its stored count) to the channels it now receives,
    read from one forward of the pruned `model`."""
    if not adapters.filters:
        return

    def resize(attr: str, bname: str):
        def hook(m: nn.Module, inputs) -> None:
            width = inputs[0].shape[1]
            if width < getattr(m, attr):
                m._buffers[bname] = m._buffers[bname][:width].clone()
                setattr(m, attr, width)
        return hook

    handles = [m.register_forward_pre_hook(resize(attr, bname)) for m, attr, bname in adapters.filters]
    try:
        with torch.no_grad():
            model(example_inputs)
    except Exception:  # noqa: BLE001  a forward broken elsewhere: the pruned-model check runs it again and names the module
        pass
    finally:
        for h in handles:
            h.remove()


def classifier_layers(model: nn.Module, num_outputs: int) -> list[nn.Module]:
    """Layers whose outputs are the model's logits (their output size must not change)."""
    layers: list[nn.Module] = []
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module):
            layers.append(head)
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == num_outputs:
            layers.append(m)
        elif isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == num_outputs and m.groups == 1:
            layers.append(m)
    return layers


def clear_caches(model: nn.Module) -> None:
    """Drop cached derived tensors (stale after pruning; they also block copy.deepcopy)."""
    for m in model.modules():
        for key, value in vars(m).items():
            if not key.startswith("_") and isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                value.clear()


def fix_attributes(model: nn.Module, adapters: ModelAdapters) -> None:
    """Make plain attributes agree with the pruned tensor shapes."""
    for m in adapters.attention:
        heads = m.num_heads
        head_dim = m.qkv.out_features // (3 * heads)
        m.head_dim = head_dim
        if hasattr(m, "attn_dim"):
            m.attn_dim = heads * head_dim
        if isinstance(getattr(m, "scale", None), float):
            m.scale = head_dim**-0.5  # matches what fused SDPA uses for the new head size
    for m, attr, pos, pname in adapters.views:
        value = list(getattr(m, attr))
        value[pos] = getattr(m, pname).numel()
        setattr(m, attr, type(getattr(m, attr))(value))
    for m in adapters.split_owners:
        if _is_mixed_conv(m):
            convs = list(m.values())
            m.splits = [c.in_channels for c in convs]
            m.in_channels = sum(c.in_channels for c in convs)
            m.out_channels = sum(c.out_channels for c in convs)
    clear_caches(model)
