"""A KV cache for generation that keeps, per layer, only the keys its attention pattern can still reach.

Each layer's keys and values sit in slots with the position of the token they came from. After every step
the attention type says which cached keys a query still to come may see
(``AttentionType.keys_still_visible``); the others are dropped and their slots reused. So:

* full, flash, BigBird and strided sparse keep every key (a future query can reach any of them);
* Longformer keeps the last ``window`` keys plus the global ones: a ring buffer, constant in the
  generated length (with rotary positions it streams past the training context);
* fixed sparse keeps the current block plus the summary columns of earlier blocks.

The prompt (an empty cache) goes through the type's own backend; later tokens attend to the cached keys
through a mask made by the type's own predicate, so the cache computes exactly the pattern it was trained on.
With document masking each slot also keeps its token's document id and the mask is ``pattern & same_document``;
a score modification (ALiBi) becomes the float mask's values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlab.attention import AttentionType
from attnlab.attention.score_mods import ScoreMod


def sdpa_mask(allowed: torch.Tensor, query_docs: torch.Tensor | None, key_docs: torch.Tensor | None,
              score_mod: ScoreMod | None, heads: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor:
    """The ``attn_mask`` SDPA takes for cached or global rows: ``allowed`` (H|1, T, S) bool, within documents
    (query_docs (B, T), key_docs (B, S); -> (B, H|1, T, S)), and with a score modification the float mask that
    adds it where allowed and -inf elsewhere. The same pairs and bias the backends compute."""
    if key_docs is not None:
        allowed = allowed & (query_docs.unsqueeze(-1) == key_docs.unsqueeze(1)).unsqueeze(1)  # (B, H|1, T, S)
    if score_mod is None:
        return allowed
    zero = torch.zeros((), dtype=torch.long, device=allowed.device)
    return score_mod(zero, heads, q_pos, k_pos).to(dtype).masked_fill(~allowed, float("-inf"))  # (B|1, H, T, S)


class LayerCache:
    """The cached keys and values of one layer: slots (B, H, S, D) and their positions (S,), -1 = free."""

    def __init__(self, attention: AttentionType, layer: int, context: int):
        self.attention, self.layer = attention, layer
        self.pattern = attention.pattern(context, layer)  # causal patterns do not depend on the length
        # does the type ever drop keys? (asked far into the future, where only its structure matters)
        far = attention.keys_still_visible(torch.zeros(1, dtype=torch.long), 1 << 40, layer)
        self.drops_keys = far is not None
        # full attention's pattern (exactly "every earlier key", by construction): one new token then needs no mask
        self.sees_every_earlier_key = not self.drops_keys and self.pattern.fused_as == "causal"
        self.k: torch.Tensor | None = None  # (B, H, S, D)
        self.v: torch.Tensor | None = None  # (B, H, S, D)
        self.pos: torch.Tensor | None = None  # (S,) long
        self.doc: torch.Tensor | None = None  # (B, S) long: each slot's document id (document masking only)
        self.filled = 0  # for a type that never drops keys: they fill slots 0..filled-1, in order
        # a type with separate global projections (AttentionType.separate_global_projections, e.g. Longformer's):
        # those projections' (k, v, positions) of every token so far, while a global query may still come
        self.global_kv: tuple | None = None  # (k, v, positions, documents or None)

    @property
    def slots(self) -> int:
        return 0 if self.pos is None else self.pos.numel()

    @property
    def kept(self) -> int:
        """Keys held now (the memory that matters; slots may be a few more)."""
        if not self.drops_keys:
            return self.filled
        return 0 if self.pos is None else int((self.pos >= 0).sum())

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               prefill, documents: torch.Tensor | None = None, score_mod: ScoreMod | None = None) -> torch.Tensor:
        """q: (B, H, T, D), k, v: (B, Hkv, T, D) of new tokens at ``positions`` (T,) -> (B, H, T, D). The cache
        holds the Hkv key/value heads (grouped-query attention: fewer than H). ``documents`` (B, T): the new
        tokens' document ids; ``score_mod``: added to the scores (both as the backend ``prefill`` applies them)."""
        if self.pos is None:  # the prompt: the type's own (efficient) backend, positions 0..T-1
            y = prefill(q, k, v)  # (B, H, T, D)
            self._store(k, v, positions, documents)
        else:
            self._store(k, v, positions, documents)
            if not self.drops_keys:  # nothing is ever freed: the keys fill a prefix of the slots
                n = self.filled
                k_all, v_all, pos = self.k[:, :, :n], self.v[:, :, :n], self.pos[:n]  # (B, H, n, D), (n,)
                doc = None if self.doc is None else self.doc[:, :n]  # (B, n)
                if q.shape[2] == 1 and self.sees_every_earlier_key and doc is None and score_mod is None:
                    # (B, H, 1, D): every key, no mask
                    return F.scaled_dot_product_attention(q, k_all, v_all, enable_gqa=k_all.shape[1] != q.shape[1])
            else:
                k_all, v_all, pos, doc = self.k, self.v, self.pos, self.doc
            H = q.shape[1]
            heads = torch.arange(H, device=q.device).view(H, 1, 1)  # (H, 1, 1)
            zero = torch.zeros((), dtype=torch.long, device=q.device)
            q_pos, k_pos = positions.view(1, -1, 1), pos.view(1, 1, -1)  # (1, T, 1), (1, 1, S)
            mask = self.pattern(zero, heads, q_pos, k_pos)  # (H|1, T, S)
            if self.drops_keys:
                mask = mask & (pos >= 0).view(1, 1, -1)  # free slots hold nothing
            mask = sdpa_mask(mask, documents, doc, score_mod, heads, q_pos, k_pos, q.dtype)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask,
                                               enable_gqa=k_all.shape[1] != q.shape[1])  # (B, H, T, D)
        if self.drops_keys:
            self._evict(int(positions[-1]) + 1)
        return y

    def _store(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, documents: torch.Tensor | None) -> None:
        T = k.shape[2]
        if self.pos is None:
            self.k, self.v, self.pos = k.clone(), v.clone(), positions.clone()
            self.doc = None if documents is None else documents.clone()
            self.filled = T
            return
        if not self.drops_keys:  # append after the filled prefix, doubling the slots when they run out
            n = self.filled
            if n + T > self.slots:
                grow = max(n + T - self.slots, self.slots)
                B, H, _, D = self.k.shape
                self.k = torch.cat([self.k, self.k.new_zeros(B, H, grow, D)], dim=2)  # (B, H, S + grow, D)
                self.v = torch.cat([self.v, self.v.new_zeros(B, H, grow, D)], dim=2)  # (B, H, S + grow, D)
                self.pos = torch.cat([self.pos, self.pos.new_full((grow,), -1)])  # (S + grow,)
                if self.doc is not None:
                    self.doc = torch.cat([self.doc, self.doc.new_full((B, grow), -1)], dim=1)  # (B, S + grow)
            self.k[:, :, n:n + T], self.v[:, :, n:n + T], self.pos[n:n + T] = k, v, positions
            if self.doc is not None:
                self.doc[:, n:n + T] = documents
            self.filled = n + T
            return
        free = (self.pos < 0).nonzero().flatten()  # (F,)
        if free.numel() < T:  # grow by exactly what is missing: slots get freed again as keys fall out of reach
            grow = T - free.numel()
            B, H, _, D = self.k.shape
            self.k = torch.cat([self.k, self.k.new_zeros(B, H, grow, D)], dim=2)  # (B, H, S + grow, D)
            self.v = torch.cat([self.v, self.v.new_zeros(B, H, grow, D)], dim=2)  # (B, H, S + grow, D)
            new = torch.arange(self.slots, self.slots + grow, device=self.pos.device)
            self.pos = torch.cat([self.pos, torch.full_like(new, -1)])  # (S + grow,)
            if self.doc is not None:
                self.doc = torch.cat([self.doc, self.doc.new_full((B, grow), -1)], dim=1)  # (B, S + grow)
            free = torch.cat([free, new])
        slots = free[:T]  # (T,)
        self.k[:, :, slots], self.v[:, :, slots], self.pos[slots] = k, v, positions
        if self.doc is not None:
            self.doc[:, slots] = documents

    def _evict(self, next_query: int) -> None:
        visible = self.attention.keys_still_visible(self.pos, next_query, self.layer)  # (S,) bool or None
        if visible is not None:
            self.pos = torch.where(visible, self.pos, torch.full_like(self.pos, -1))


class KVCache:
    """One LayerCache per layer, and how many tokens have gone through (the next token's position)."""

    def __init__(self, attention: AttentionType, n_layer: int, context: int):
        if not attention.causal:
            raise ValueError(f"attention {attention.name!r} is bidirectional (causal=false): a KV cache, and "
                             f"generation itself, needs a causal model")
        self.layers = [LayerCache(attention, i, context) for i in range(n_layer)]
        self.length = 0
        self.documents_ended: torch.Tensor | None = None  # (B,) end tokens fed so far (document masking)

    def kept(self) -> int:
        """Keys held across layers (a measure of the cache's memory)."""
        return sum(layer.kept for layer in self.layers)

    def slots(self) -> int:
        return sum(layer.slots for layer in self.layers)
