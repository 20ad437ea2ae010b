"""The LightningModule: next-token loss, perplexity, AdamW with decay groups, warmup + cosine schedule."""
from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics

from attnlab.data.datamodule import IGNORE
from attnlab.attention import AttentionType
from attnlab.model import GPT, GPTConfig



class TokenLoss(torchmetrics.Metric):
    """Mean next-token loss over every counted target, from the losses already computed (summed NLL and token
    counts). Its states are sums, so under DDP they add up across ranks: every target counts once, wherever
    it was evaluated."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, mean_nll: torch.Tensor, n_tokens: int | torch.Tensor) -> None:
        self.nll_sum += mean_nll.detach().double() * n_tokens
        self.count += n_tokens

    def compute(self) -> torch.Tensor:
        return (self.nll_sum / self.count.clamp(min=1)).float()


class Perplexity(TokenLoss):
    """exp of the same token-weighted mean loss, so the perplexity shown is always exp(loss shown)."""

    def compute(self) -> torch.Tensor:
        return torch.exp(super().compute())


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to min_ratio at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LitGPT(L.LightningModule):
    """The GPT, its loss and metrics, and the optimiser. Takes the model config and the attention type as
    built (and checked) objects; their settings are saved with every checkpoint as plain data."""

    def __init__(self, model_cfg: GPTConfig, attention: AttentionType, optimizer: Callable | None = None,
                 scheduler: dict | None = None, compile: bool = False, run_info: dict | None = None):
        super().__init__()
        # the model and attention settings live once per checkpoint, in checkpoint["attnlab"]["settings"]
        self.save_hyperparameters({"scheduler": dict(scheduler or {}), "compile": compile})
        self.cfg = model_cfg
        self.model = GPT(model_cfg, attention)
        self.optimizer_factory = optimizer or (lambda params: torch.optim.AdamW(params, lr=3e-4))
        self.scheduler_cfg = dict(scheduler or {})
        self.compile = compile
        self.run_info = dict(run_info or {})  # run key and settings, saved in checkpoints to match resumes
        self.wandb_run_id: str | None = None
        self.train_ppl, self.val_ppl, self.test_ppl = Perplexity(), Perplexity(), Perplexity()
        self.val_loss, self.test_loss = TokenLoss(), TokenLoss()
        self.val_ppl_best = torchmetrics.MinMetric()  # the best validation perplexity so far (a W&B summary)
        self.example_input_array = torch.zeros(1, self.cfg.context, dtype=torch.long)  # summary in/out shapes
        self.answers_only = False  # data.loss_on=answers: the loss computes the logits of the counted targets only

    def configure_model(self) -> None:
        if self.compile and not isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            self.model = torch.compile(self.model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token loss over the batch's counted targets, and how many there were."""
        x, y = batch  # (B, T), (B, T)
        counted = y != IGNORE  # (B, T)
        n = counted.sum()  # a DDP padding batch may count none
        if self.answers_only:  # a few answers per window: the output layer only where they are
            logits, y = self.model(x, only=counted), y[counted]  # (N, V), (N,)
        else:
            logits, y = self(x).flatten(0, 1), y.flatten()  # (B*T, V), (B*T,)
        loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE, reduction="sum")
        return loss / n.clamp(min=1), n

    # -- steps ---------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, n = self.loss(batch)
        self.train_ppl.update(loss, n)
        # Lightning's per-call logging bookkeeping costs ~1 ms a step: pay it only on the steps Lightning writes,
        # those where (optimizer steps done + 1) is a multiple of trainer.log_every_n_steps
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/ppl", torch.exp(loss.detach()), prog_bar=True)
        if batch_idx == 0:  # the metric object keeps its own state; Lightning computes and resets it per epoch
            self.log("train/ppl_epoch", self.train_ppl, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, n = self.loss(batch)
        self.val_loss.update(loss, n)
        self.val_ppl.update(loss, n)
        self.log("val/loss", self.val_loss, prog_bar=True)  # token-weighted mean over the split, all ranks
        self.log("val/ppl", self.val_ppl, prog_bar=True)

    def _log_bits_per_byte(self, split: str, loss: TokenLoss) -> None:
        """``<split>/bpb``: the loss in bits per byte of text, comparable across tokenizers (perplexity is not)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        ratio = datamodule.tokens_per_byte(split) if hasattr(datamodule, "tokens_per_byte") else None
        if ratio and loss.update_called:
            self.log(f"{split}/bpb", loss.compute() * ratio / math.log(2), sync_dist=True)  # equal on every rank

    def on_test_epoch_end(self) -> None:
        self._log_bits_per_byte("test", self.test_loss)
        # how many targets the figure counts: a test limited to some batches (mode=debug) is not the split's
        self.log("test/targets", self.test_loss.count.double(), sync_dist=True, reduce_fx="sum")  # all ranks

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_bits_per_byte("val", self.val_loss)
            self.log("val/targets", self.val_loss.count.double(), sync_dist=True, reduce_fx="sum")
        if self.trainer.sanity_checking or not self.val_ppl.update_called or self.trainer.state.fn != "fit":
            return  # validate_first's score is of the weights before training: not this run's best
        self.val_ppl_best.update(self.val_ppl.compute())
        self.log("val/ppl_best", self.val_ppl_best.compute(), sync_dist=True)  # the same on every rank

    def test_step(self, batch, batch_idx: int) -> None:
        loss, n = self.loss(batch)
        self.test_loss.update(loss, n)
        self.test_ppl.update(loss, n)
        self.log("test/loss", self.test_loss)
        self.log("test/ppl", self.test_ppl)

    # -- optimiser -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]  # matmul weights and embeddings: the optimizer's weight_decay
        no_decay = [p for p in params if p.dim() < 2]  # biases and LayerNorm gains: decaying them hurts
        opt = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if (getattr(opt, "_step_supports_amp_scaling", False) and str(self.trainer.precision).startswith("16")
                and self.trainer.gradient_clip_val):
            # fp16's loss scaler unscales inside a fused step, after clipping would run: clipping needs the
            # unfused optimizer here (bf16 has no scaler and keeps the fused one, see configure_gradient_clipping)
            opt = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], fused=False)
        total = self.scheduler_cfg.get("total_steps") or int(self.trainer.estimated_stepping_batches)
        warmup = int(self.scheduler_cfg.get("warmup_steps", 0))
        min_ratio = float(self.scheduler_cfg.get("min_lr_ratio", 0.1))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, warmup, total, min_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """bf16 needs no loss scaling, so its gradients are the true ones and can be clipped directly. Lightning
        refuses to clip for any optimizer that *could* unscale (the fused AdamW), so clip here in that case."""
        if (gradient_clip_val and "bf16" in str(self.trainer.precision)
                and getattr(optimizer, "_step_supports_amp_scaling", False)):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- checkpoints say which run they belong to, and carry what a resume must not forget ---------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = float(self.val_ppl_best.compute()) if self.val_ppl_best.update_called else None
        checkpoint["attnlab"] = {**self.run_info, "wandb_run_id": self.wandb_run_id, "val_ppl_best": best,
                                 "format": 2}  # checkpoints.FORMAT: a digest is required

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("attnlab", {}).get("val_ppl_best")
        if best is not None:  # val/ppl_best is the best of the whole run, not of the part since the resume
            self.val_ppl_best.update(torch.tensor(float(best), device=self.device))
