"""The LightningModule: next-token loss, perplexity, AdamW with decay groups, warmup + cosine schedule."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics

from attnlab.data.datamodule import IGNORE
from attnlab.model import GPT, GPTConfig

log = logging.getLogger(__name__)


class Perplexity(torchmetrics.Metric):
    """exp(mean token NLL), accumulated from the loss already computed (summed NLL and token counts), so
    the perplexity shown is always exp of the same mean loss."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, mean_nll: torch.Tensor, n_tokens: int | torch.Tensor) -> None:
        self.nll_sum += mean_nll.detach().double() * n_tokens
        self.count += n_tokens

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll_sum / self.count.clamp(min=1)).float()


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to min_ratio at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LitGPT(L.LightningModule):
    def __init__(self, model: dict, attention: dict, optimizer: Callable | None = None,
                 scheduler: dict | None = None, compile: bool = False, vocab_size: int | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        model_cfg = {k: v for k, v in dict(model).items() if k != "name"}
        if vocab_size is not None:
            model_cfg["vocab_size"] = vocab_size
        self.cfg = GPTConfig(**model_cfg)
        self.model = GPT(self.cfg, dict(attention))
        self.optimizer_factory = optimizer or (lambda params: torch.optim.AdamW(params, lr=3e-4))
        self.scheduler_cfg = dict(scheduler or {})
        self.compile = compile
        self.train_ppl, self.val_ppl, self.test_ppl = Perplexity(), Perplexity(), Perplexity()
        self.example_input_array = torch.zeros(1, self.cfg.context, dtype=torch.long)  # summary in/out shapes

    def configure_model(self) -> None:
        if self.compile and not isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            self.model = torch.compile(self.model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch  # (B, T), (B, T)
        logits = self(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE)
        return loss, (y != IGNORE).sum()

    # -- steps ---------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, n = self._loss(batch)
        self.train_ppl.update(loss, n)
        # Lightning's per-call logging bookkeeping costs ~1 ms a step: pay it only on the steps that are written
        # (and on the progress bar's refreshes, which read the same values)
        connector = getattr(self._trainer, "_logger_connector", None)
        if connector is None or getattr(connector, "should_update_logs", True):
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/ppl", torch.exp(loss.detach()), prog_bar=True)
        if batch_idx == 0:  # the metric object keeps its own state; Lightning computes and resets it per epoch
            self.log("train/ppl_epoch", self.train_ppl, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, n = self._loss(batch)
        self.val_ppl.update(loss, n)
        self.log("val/loss", loss, batch_size=int(n), prog_bar=True)  # token-weighted mean over the split
        self.log("val/ppl", self.val_ppl, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, n = self._loss(batch)
        self.test_ppl.update(loss, n)
        self.log("test/loss", loss, batch_size=int(n))
        self.log("test/ppl", self.test_ppl)

    # -- the course's tip: is the loss at initialisation what it should be? ----------------------------------
    def on_fit_start(self) -> None:
        if self.trainer.global_step > 0:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        x, y = next(iter(dm.train_dataloader()))
        was_training = self.training
        self.eval()
        with torch.no_grad():
            loss, _ = self._loss((x[:8].to(self.device), y[:8].to(self.device)))
        self.train(was_training)
        expected = math.log(self.cfg.vocab_size)
        from attnlab.callbacks import log_now
        log_now(self.trainer, {"init/loss": loss.item(), "init/expected_loss": expected})
        msg = f"loss at initialisation {loss.item():.3f}, expected ln(vocab_size={self.cfg.vocab_size}) = {expected:.3f}"
        if abs(loss.item() - expected) > max(0.5, 0.15 * expected):
            log.warning(msg + ": far off; check the initialisation, the labels and the vocabulary")
        else:
            log.info(msg)

    # -- optimiser -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]  # matmul weights and embeddings
        no_decay = [p for p in params if p.dim() < 2]  # biases and LayerNorm gains: decaying them hurts
        wd = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.1)
        opt = self.optimizer_factory([{"params": decay, "weight_decay": wd},
                                      {"params": no_decay, "weight_decay": 0.0}])
        total = self.scheduler_cfg.get("total_steps") or int(self.trainer.estimated_stepping_batches)
        warmup = int(self.scheduler_cfg.get("warmup_steps", 0))
        min_ratio = float(self.scheduler_cfg.get("min_lr_ratio", 0.1))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, warmup, total, min_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

    # -- checkpoints carry the data position and the W&B run id ------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # batches of this epoch already trained on (the progress counter includes the batch just processed,
        # which matters because checkpoint callbacks run before this module's on_train_batch_end)
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        checkpoint["attnlab"] = {"batches_in_epoch": int(done), "epoch": self.current_epoch,
                                 "batches_per_epoch": self.trainer.num_training_batches,
                                 "wandb_run_id": getattr(self, "wandb_run_id", None)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Tell the datamodule where in its data the run stopped, before Lightning builds the train loader."""
        pos = checkpoint.get("attnlab", {})
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if not pos or dm is None or not hasattr(dm, "resume_from"):
            return
        epoch, done, per_epoch = int(pos["epoch"]), int(pos["batches_in_epoch"]), pos.get("batches_per_epoch")
        if isinstance(per_epoch, (int, float)) and done >= per_epoch:  # saved at the end of an epoch
            epoch, done = epoch + 1, 0
        dm.resume_from(epoch, done)
