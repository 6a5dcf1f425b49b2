"""open_clip tower wrappers for the ONNX export (imports torch at the top; import lazily).

* :class:`OpenClipVisionTower`: ``encode_image`` + L2 normalisation.
* :class:`CausalTextTower`: open_clip's causal text tower with its mask and positional embedding
  cut to the batch's length ``T`` (``CLIP.encode_text`` / ``TextTransformer.forward`` otherwise);
  :class:`OpenClipTextTower`: ``encode_text`` itself at the context length.
* :func:`text_tower` picks one; :func:`traceable_attention` makes ``nn.MultiheadAttention``
  exportable with a dynamic sequence axis (explicit matrix products, the fused fast path off).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

POOLING = {"argmax": "max_id", "eos": "first_eos", "first": "first", "last": "last"}


class OpenClipVisionTower(nn.Module):
    """``pixel_values [B,3,H,W] -> image_embeds [B,D]``: ``encode_image`` then L2 normalisation."""

    input_names = ("pixel_values",)
    output_names = ("image_embeds",)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixel_values), dim=-1)


class OpenClipTextTower(nn.Module):
    """``input_ids [B, context_length] -> text_embeds [B,D]``: ``encode_text`` then L2 normalisation."""

    input_names = ("input_ids",)
    output_names = ("text_embeds",)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(input_ids), dim=-1)


class CausalTextTower(nn.Module):
    """``input_ids [B, T] -> text_embeds [B,D]`` for ``T <= context_length``: open_clip's causal text
    tower with its mask and positional embedding cut to ``T`` (``CLIP.encode_text`` /
    ``TextTransformer.forward`` otherwise)."""

    input_names = ("input_ids",)
    output_names = ("text_embeds",)

    def __init__(self, parts: nn.Module, pool_type: str, eos_id: int | None):
        super().__init__()
        self.parts = parts
        self.pool_type = pool_type
        self.eos_id = eos_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        p = self.parts
        length = input_ids.shape[1]
        cast_dtype = p.transformer.get_cast_dtype()
        x = p.token_embedding(input_ids).to(cast_dtype)
        x = x + p.positional_embedding[:length].to(cast_dtype)
        x = p.transformer(x, attn_mask=p.attn_mask[:length, :length])
        x = p.ln_final(x)
        x = text_global_pool(x, input_ids, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(p.text_projection, nn.Linear):
            x = p.text_projection(x)
        elif p.text_projection is not None:
            x = x @ p.text_projection
        return F.normalize(x, dim=-1)


def text_parts(model: nn.Module):
    """``(module holding the text tower's parts, pool_type, eos_id)``, or ``None`` when the text tower
    is not open_clip's own transformer."""
    from open_clip.transformer import TextTransformer

    if hasattr(model, "token_embedding") and hasattr(model, "attn_mask"):  # CLIP keeps them on itself
        return model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        return text, text.pool_type, getattr(text, "eos_id", None)
    return None


def attention_modules(parts: nn.Module) -> list[nn.MultiheadAttention] | None:
    """The self-attention modules of a tower's transformer (``parts.transformer``) when every block
    is open_clip's default block over ``nn.MultiheadAttention`` (self-attention, batch first, one
    in-projection, no extra key/value bias); else ``None``."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = list(getattr(getattr(parts, "transformer", None), "resblocks", []))
    if not blocks or not all(isinstance(b, ResidualAttentionBlock) and getattr(b, "ln_1_kv", None) is None
                             for b in blocks):
        return None
    mods = [b.attn for b in blocks]
    ok = all(isinstance(m, nn.MultiheadAttention) and m.batch_first and m._qkv_same_embed_dim
             and m.bias_k is None and not m.add_zero_attn for m in mods)
    return mods if ok else None


def text_tower(model: nn.Module) -> tuple[nn.Module, str, str, list | None]:
    """``(tower, padding, pooling, attention modules to make traceable)``.

    ``"longest"`` padding for a causal tower whose pooled token ignores what follows it, else
    ``"max_length"`` (``encode_text`` as it is)."""
    found = text_parts(model)
    if found is not None:
        parts, pool_type, eos_id = found
        causal = getattr(parts, "attn_mask", None) is not None
        plain = getattr(parts, "cls_emb", None) is None and not getattr(parts, "use_pad_mask", False)
        attention = attention_modules(parts)
        if causal and plain and pool_type in ("argmax", "eos", "first") and attention is not None:
            return CausalTextTower(parts, pool_type, eos_id).eval(), "longest", POOLING[pool_type], attention
        pooling = POOLING.get(pool_type, "last")
    else:
        pooling = "last"
    return OpenClipTextTower(model).eval(), "max_length", pooling, None


def _explicit_self_attention(module: nn.MultiheadAttention):
    """A forward for ``module`` (batch first, query = key = value) written with shape-free reshapes,
    so the legacy ONNX exporter keeps the sequence axis dynamic. Same arithmetic as PyTorch's:
    in-projection, softmax(q kᵀ / sqrt(head dim) + mask) v per head, out-projection."""
    heads = module.num_heads
    dim = module.embed_dim
    head_dim = dim // heads
    scale = 1.0 / math.sqrt(head_dim)

    def forward(query, key=None, value=None, need_weights=False, attn_mask=None, **_):
        batch = query.shape[0]
        qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        q = q.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        k = k.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        v = v.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        if attn_mask is not None:
            scores = scores + attn_mask.to(scores.dtype)
        out = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(batch, -1, dim)
        return module.out_proj(out), None

    return forward


@contextlib.contextmanager
def traceable_attention(modules: list[nn.MultiheadAttention] | None):
    """Swap each module's ``forward`` for :func:`_explicit_self_attention` while inside, and keep
    every other ``nn.MultiheadAttention`` off its fused fast path (``_native_multi_head_attention``,
    which the ONNX exporter cannot write)."""
    saved = []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for m in modules or []:
            saved.append((m, m.__dict__.get("forward")))
            m.forward = _explicit_self_attention(m)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, old in saved:
            if old is None:
                del m.forward
            else:
                m.forward = old


