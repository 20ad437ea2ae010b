"""A GPT-style decoder-only Transformer with a pluggable attention type.

Read top to bottom: config -> attention layer -> MLP -> block -> GPT. Shapes use B (batch), T (time,
the sequence length), C (d_model), H (heads), D (head dim = C / H), V (vocabulary size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnlab.attention import AttentionType, build_attention
from attnlab.attention.patterns import document_ids
from attnlab.attention.score_mods import SCORE_MODS
from attnlab.errors import ConfigError
from attnlab.kv_cache import KVCache, LayerCache, sdpa_mask

POSITIONS = ("learned", "rope", *SCORE_MODS)  # a table, a rotation, or a score modification (score_mods.py)
ACTIVATIONS = {"gelu": lambda x: F.gelu(x), "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}  # gelu_tanh: GPT-2's


@dataclass
class GPTConfig:
    vocab_size: int = 65  # set from the tokenizer at run time; 65 = the characters of tiny Shakespeare
    context: int = 256  # longest sequence the position table covers (T <= context)
    n_layer: int = 6  # depth: activations and compute grow linearly with it
    n_head: int = 6  # attention heads; d_model must divide evenly among them
    d_model: int = 384  # residual width C: parameters grow ~12 * n_layer * C^2
    d_ff: int = 0  # MLP hidden width; 0 means the usual 4 * d_model
    dropout: float = 0.0  # 0 for pretraining-scale data; ~0.2 for small corpora like Shakespeare
    bias: bool = False  # no biases in Linear/LayerNorm: slightly faster and as good (nanoGPT's finding)
    tie_weights: bool = True  # output head shares the token embedding: fewer parameters, better small-data fit
    positions: str = "learned"  # learned: a table of `context` positions (GPT-2); rope: rotary (Su et al. 2021),
    #   relative, no table, so a KV cache can stream past the context (Longformer at constant memory); alibi: no
    #   embedding, a per-head distance penalty on the scores (Press et al. 2022), relative and table-free too
    rope_base: float = 10000.0  # rotary's base wavelength (RoFormer's value)
    activation: str = "gelu"  # the MLP's non-linearity: gelu (exact) or gelu_tanh (GPT-2's approximation)
    layer_norm_eps: float = 1e-5  # LayerNorm's epsilon (torch's and GPT-2's default)
    n_kv_head: int | None = None  # key/value heads: None = n_head (multi-head); 1 = multi-query (Shazeer 2019);
    #   n_head / g = grouped-query (Ainslie et al. 2023): each key/value head serves g query heads, and the KV
    #   cache holds n_kv_head heads, n_head / n_kv_head times less than multi-head
    document_end: int | None = None  # the token that ends a document: a token then attends only to its own
    #   document (document masking; set to the tokenizer's end-of-sequence id by data.document_mask=true).
    #   None: a packed window attends across the end tokens that separate its documents

    def __post_init__(self):
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model
        for name in ("vocab_size", "context", "n_layer", "n_head", "d_model", "d_ff"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.d_model % self.n_head != 0:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}: "
                             f"each head gets d_model / n_head dimensions "
                             f"(try n_head in {[h for h in range(1, 33) if self.d_model % h == 0]})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.positions not in POSITIONS:
            raise ConfigError(f"model.positions={self.positions!r}; valid: {list(POSITIONS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={self.activation!r}; valid: {sorted(ACTIVATIONS)}")
        if not 0 < self.layer_norm_eps < 1:
            raise ConfigError(f"model.layer_norm_eps={self.layer_norm_eps} must be in (0, 1)")
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"model.positions=rope rotates pairs of dimensions: the head dimension "
                             f"d_model / n_head = {self.head_dim} must be even")
        if self.rope_base <= 1:
            raise ConfigError(f"model.rope_base={self.rope_base} must be > 1")
        if self.document_end is not None and not 0 <= self.document_end < self.vocab_size:
            raise ConfigError(f"model.document_end={self.document_end} is not a token of the vocabulary "
                              f"(0 .. {self.vocab_size - 1})")
        if self.n_kv_head is not None and not (1 <= self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0):
            raise ConfigError(f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head} (each key/value "
                              f"head serves n_head / n_kv_head query heads): one of "
                              f"{[h for h in range(1, self.n_head + 1) if self.n_head % h == 0]}, or null")

    @property
    def score_mod_name(self) -> str | None:
        """The score modification the positions add (the backend must take one), or None."""
        return self.positions if self.positions in SCORE_MODS else None

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_head``, or ``n_head`` when it is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class Rotary(nn.Module):
    """Rotary position embedding: rotates each (x_i, x_{i+D/2}) pair of a query or key by an angle
    proportional to its position, so that q . k depends on positions only through their difference."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)  # derived: not in checkpoints

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, H, T, D), positions: (T,) -> (B, H, T, D)."""
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]  # (T, D/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # (T, D/2) each
        x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (B, H, T, D)


class AttentionInputs(NamedTuple):
    """One layer's attention inputs from a forward pass: what ``attnlab.analysis`` turns into probabilities."""
    layer: int
    q: torch.Tensor  # (B, H, T, D), rotated when positions are rotary
    k: torch.Tensor  # (B, Hkv, T, D): the key/value heads (SelfAttention.heads_of spreads them over the queries)
    positions: torch.Tensor  # (T,)
    documents: torch.Tensor | None  # (B, T) document ids (document masking), else None
    global_qk: tuple[torch.Tensor, torch.Tensor] | None  # the global projections' (q, k) where the type has them


class SelfAttention(nn.Module):
    """Multi-head self-attention; *which* keys each query sees and *how* is the attention type's business."""

    def __init__(self, cfg: GPTConfig, attention: AttentionType, layer: int):
        super().__init__()
        self.n_head, self.head_dim, self.layer = cfg.n_head, cfg.head_dim, layer
        self.n_kv_head = cfg.kv_heads
        self.attention = attention
        qkv_width = cfg.d_model + 2 * self.n_kv_head * cfg.head_dim  # q: every head; k, v: the key/value heads
        self.qkv = nn.Linear(cfg.d_model, qkv_width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.is_residual_out = True  # scaled init, see GPT._init_weights
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base) if cfg.positions == "rope" else None
        self.score_mod = SCORE_MODS[cfg.positions](cfg.n_head) if cfg.score_mod_name else None  # added by the backend
        # Longformer's global_projections: the global queries' own rows get their own Q/K/V (None: shared)
        self.qkv_global = nn.Linear(cfg.d_model, qkv_width, bias=cfg.bias) \
            if attention.separate_global_projections else None
        self._attend, self._attend_device = None, None  # the backend, resolved once for the device it runs on

    def project(self, x: torch.Tensor, positions: torch.Tensor, qkv: nn.Linear | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, C) -> q: (B, H, T, D), k, v: (B, Hkv, T, D), rotated when positions are rotary (Hkv = H
        unless the model groups its key/value heads). ``qkv``: another projection (the global one)."""
        B, T, C = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = (qkv or self.qkv)(x).split([C, kv, kv], dim=2)  # (B, T, C), (B, T, Hkv*D) x 2
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = (t.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))  # (B, Hkv, T, D)
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        return q, k, v

    def heads_of(self, t: torch.Tensor) -> torch.Tensor:
        """A key or value tensor (B, Hkv, T, D) -> (B, H, T, D): key/value head j serves query heads j*g .. j*g+g-1
        (g = H / Hkv), as SDPA's enable_gqa reads them. An exact copy for the backends, which take one key/value
        head per query head."""
        g = self.n_head // t.shape[1]
        return t if g == 1 else t.repeat_interleave(g, dim=1)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None = None,
                intermediates: list | None = None, documents: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C) at ``positions`` (T,) -> (B, T, C); with a cache, attends to its keys too and adds its own.
        ``intermediates``: a list this layer appends its ``AttentionInputs`` to (analysis reads this forward's own
        queries and keys, not a copy of it). ``documents`` (B, T): document ids, when attention stays within them."""
        B, T, C = x.shape
        q, k, v = self.project(x, positions)  # (B, H, T, D) each
        if intermediates is not None:
            global_qk = self.project(x, positions, self.qkv_global)[:2] if self.qkv_global is not None else None
            intermediates.append(AttentionInputs(self.layer, q, k, positions, documents, global_qk))
        if self._attend_device != q.device:  # built on the CPU, then moved: resolve where it runs, once
            self._attend = self.attention.bind(q.device, self.layer, self.score_mod)
            self._attend_device = q.device
        if cache is None:
            y = self._attend(q, self.heads_of(k), self.heads_of(v), documents)  # (B, H, T, D)
        else:  # the cache keeps the key/value heads as they are: its memory is what grouping saves
            y = cache.attend(q, k, v, positions,
                             lambda q_, k_, v_: self._attend(q_, self.heads_of(k_), self.heads_of(v_), documents),
                             documents, self.score_mod)
        if self.qkv_global is not None:
            y = self.global_rows(x, positions, y, cache, documents)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.proj(y))  # (B, T, C)


    def global_rows(self, x: torch.Tensor, positions: torch.Tensor, y: torch.Tensor, cache: LayerCache | None,
                    documents: torch.Tensor | None = None) -> torch.Tensor:
        """y (B, H, T, D) with the rows of global queries recomputed from the global projections: such a row
        sees every key the pattern allows (all earlier ones when causal), so it is a dense O(g T) product. In
        generation the global keys and values are kept only while a global query can still come."""
        is_global = self.attention.is_global(positions)  # (T,) bool
        if cache is not None and int(positions[0]) > self.attention.last_global_query():
            cache.global_kv = None  # no global query can come any more
            return y
        if cache is None and not bool(is_global.any()):
            return y
        qg, kg, vg = self.project(x, positions, self.qkv_global)  # (B, H, T, D) each
        key_pos, key_doc = positions, documents
        if cache is not None:  # the global keys and values of every earlier token too
            if cache.global_kv is not None:
                k0, v0, p0, d0 = cache.global_kv
                kg, vg, key_pos = torch.cat([k0, kg], 2), torch.cat([v0, vg], 2), torch.cat([p0, positions])
                key_doc = None if d0 is None else torch.cat([d0, documents], 1)
            cache.global_kv = (kg, vg, key_pos, key_doc)  # (B, H, S, D), (B, H, S, D), (S,), (B, S) or None
        rows = is_global.nonzero().flatten()  # (R,)
        if rows.numel() == 0:
            return y
        # a global query sees every key (every earlier one when causal) of its document: the type's definition
        q_pos, k_pos = positions[rows].view(-1, 1), key_pos.view(1, -1)  # (R, 1), (1, S)
        mask = (k_pos <= q_pos) if self.attention.causal else torch.ones_like(k_pos <= q_pos)  # (R, S)
        heads = torch.arange(self.n_head, device=x.device).view(-1, 1, 1)  # (H, 1, 1)
        query_docs = None if key_doc is None else documents[:, rows]  # (B, R)
        mask = sdpa_mask(mask.unsqueeze(0), query_docs, key_doc, self.score_mod, heads, q_pos, k_pos, qg.dtype)
        yg = F.scaled_dot_product_attention(qg[:, :, rows], kg, vg, attn_mask=mask,
                                            enable_gqa=kg.shape[1] != qg.shape[1])  # (B, H, R, D)
        return y.index_copy(2, rows, yg.to(y.dtype))  # (B, H, T, D)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.down.is_residual_out = True
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.up(x))))  # (B, T, C) -> (B, T, d_ff) -> (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig, attention: AttentionType, layer: int):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = SelfAttention(cfg, attention, layer)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None = None,
                intermediates: list | None = None, documents: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), positions, cache, intermediates, documents)  # (B, T, C)
        return x + self.mlp(self.ln_mlp(x))  # (B, T, C)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, attention: AttentionType | dict | None = None):
        super().__init__()
        if attention is None:
            attention = {"name": "full"}
        if not isinstance(attention, AttentionType):
            attention = build_attention(attention)
        attention.check(cfg.context, cfg.n_head, score_mod=cfg.score_mod_name)
        self.cfg, self.attention = cfg, attention
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, attention, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight  # one (V, C) matrix for both input and output
        self.apply(self._init_weights)
        self._vocab_checked = False

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 init: N(0, 0.02); the projections that write into the residual stream get 0.02/sqrt(2L) so the
        # residual's variance does not grow with depth.
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(module, "is_residual_out", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def pool_kv_heads(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Weights of a multi-head model for this grouped-query one: each group's key and value heads are averaged
        into one (mean-pooling, the uptraining recipe of Ainslie et al. 2023, "GQA"). Queries are kept. Changes
        ``state`` in place (its ``qkv`` projections of a wider shape); returns the names it pooled."""
        pooled = []
        H, D, Hkv = self.cfg.n_head, self.cfg.head_dim, self.cfg.kv_heads
        C = self.cfg.d_model
        if Hkv == H:
            return pooled
        for name, want in self.state_dict().items():
            if not (name.endswith((".attn.qkv.weight", ".attn.qkv.bias", ".attn.qkv_global.weight",
                                   ".attn.qkv_global.bias")) and name in state):
                continue
            have = state[name]
            if have.shape[0] != 3 * C or want.shape[0] != C + 2 * Hkv * D:
                continue
            q, k, v = have.split(C, dim=0)  # (C, ...) each
            group = lambda t: t.reshape(Hkv, H // Hkv, D, *t.shape[1:]).mean(1).reshape(Hkv * D, *t.shape[1:])  # noqa: E731
            state[name] = torch.cat([q, group(k), group(v)], dim=0)  # (C + 2 Hkv D, ...)
            pooled.append(name)
        return pooled

    def fill_global_projections(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Weights from a model with shared projections, for this one with Longformer's global projections:
        each layer's missing ``qkv_global`` starts as a copy of its ``qkv`` (so the outputs are unchanged until
        training moves them apart). Adds to ``state`` in place; returns the names it filled."""
        filled = []
        for name in self.state_dict():
            shared = name.replace(".attn.qkv_global.", ".attn.qkv.")
            if ".attn.qkv_global." in name and name not in state and shared in state:  # (else: load reports it)
                state[name] = state[shared].clone()
                filled.append(name)
        return filled

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if non_embedding and self.pos_emb is not None else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 x parameters for the matmuls, plus attention's
        12 x layers x d_model x (keys a query attends to, on average, under this attention pattern)."""
        T = seq_len or self.cfg.context
        avg_keys = self.attention.attended_keys(T) / T
        return 6 * self.num_params() + 12 * self.cfg.n_layer * self.cfg.d_model * avg_keys

    def new_cache(self) -> KVCache:
        return KVCache(self.attention, self.cfg.n_layer, self.cfg.context)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, only: torch.Tensor | None = None,
                intermediates: list | None = None) -> torch.Tensor:
        """idx: (B, T) token ids -> logits (B, T, V). With a cache, idx continues the tokens already in it.
        ``only`` (B, T) bool: the logits of those positions alone, (N, V) in row-major order: a loss that counts
        a few targets (a task's answers) skips the output layer everywhere else. ``intermediates``: a list that
        receives each layer's ``AttentionInputs`` (x-transformers' return_intermediates)."""
        if idx.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, time), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.context and self.pos_emb is not None:  # rotary positions have no table to outgrow
            raise ValueError(f"sequence length {start + T} is longer than the model's context {self.cfg.context} "
                             f"(model.context); use shorter windows or a larger context")
        if not self._vocab_checked and not torch.compiler.is_compiling() and idx.numel():
            # checked on the first batch only: reading the max back is a host-device sync on a GPU
            top = int(idx.max())
            if top >= self.cfg.vocab_size or int(idx.min()) < 0:
                raise ValueError(f"token id {top} is outside the model's vocabulary of {self.cfg.vocab_size} "
                                 f"(model.vocab_size): the tokenizer and the model disagree")
            self._vocab_checked = self.training  # eval passes (summary, init check) do not end the checking
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        documents = None
        if self.cfg.document_end is not None and T:  # document ids, continuing the cache's count of ended documents
            ended = cache.documents_ended if cache is not None else None
            documents = document_ids(idx, self.cfg.document_end, ended)  # (B, T)
            if cache is not None:
                cache.documents_ended = documents[:, -1] + (idx[:, -1] == self.cfg.document_end).long()  # (B,)
            elif not torch.compiler.is_compiling() and bool((documents[:, -1] == documents[:, 0]).all()):
                documents = None  # no window of the batch crosses an end: nothing to mask (most windows of long texts)
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)  # (B, T, C)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, pos, cache.layers[i] if cache is not None else None, intermediates, documents)  # (B, T, C)
        if cache is not None:
            cache.length += T
        if only is not None:
            x = x[only]  # (N, C)
        return self.head(self.ln_f(x))  # (B, T, V), or (N, V)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations of idx (B, T) -> (B, T + max_new_tokens). top_k=1 is greedy decoding.

        With the cache, the prompt goes through once and every later token costs one position. Learned
        positions end at the context: from there each token re-encodes the last ``context`` tokens (the
        uncached way). Rotary positions stream on, each attention type keeping what its pattern can reach. On a
        CPU the Linear weights compute from (in, out)-laid copies for the call (``generation.decode_layout``): the
        model's own tensors are untouched."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0 (top_k=1 gives greedy decoding)")
        from attnlab.generation import DecodeLayout
        was_training = self.training
        self.eval()
        layout = DecodeLayout(self, keep=not was_training)  # training changes the weights: copies not kept
        try:
            return self._sample(idx, max_new_tokens, temperature, top_k, use_cache, generator, layout)
        finally:  # the model as it was found, even when interrupted
            layout.close()
            self.train(was_training)

    def _sample(self, idx, max_new_tokens, temperature, top_k, use_cache, generator, layout) -> torch.Tensor:
        cache = self.new_cache() if use_cache else None
        fed = 0  # tokens of idx already in the cache
        for _ in range(max_new_tokens):
            if cache is not None and (self.pos_emb is None or idx.size(1) <= self.cfg.context):
                layout.use(idx.size(1) - fed == 1)  # one-token steps from the decoding copies, the prompt not
                logits = self(idx[:, fed:], cache)[:, -1, :]  # (B, V): only the tokens the cache has not seen
                fed = idx.size(1)
            else:
                cache = None  # past a learned position table: the window slides, cached keys are stale
                layout.use(False)  # a whole window: a matrix-matrix product, faster from the own layout
                logits = self(idx[:, -self.cfg.context:])[:, -1, :]  # (B, V)
            logits = logits.float() / temperature  # (B, V)
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
        return idx
