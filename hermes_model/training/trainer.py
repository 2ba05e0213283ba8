"""The :class:`Trainer`: one run's model, optimiser, data stream, validation and files.

``loop.train`` is the entry point and documents the behaviour; this module holds the state and
the steps. Beside it: ``run_types`` (what a run is asked and returns), ``prepare`` (data, model,
starting weights), ``checkpointing`` (files and resume) and ``run_validation`` (best weights,
the incremental guard). Everything that differs between ranks (augmenter and CUDA generators) is
gathered on rank 0 when the state is saved; everything else is identical on every rank.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from hermes_model.errors import ConfigError, OutputError
from hermes_model.nets.hermes import SegmentationNet
from hermes_model.pipeline.windows import WindowSettings
from hermes_model.training import checkpointing, prepare, run_validation
from hermes_model.training.augment import Augmenter, mirror_partners
from hermes_model.training.deep_supervision import DeepSupervised, deep_supervision_loss
from hermes_model.training.distributed import DistContext, wrap_model
from hermes_model.training.logbook import LiveView, RunLog, plot_curves, utc_now
from hermes_model.training.losses import LossTerms, bce_dice_loss
from hermes_model.training.optim import ModelEMA, make_optimizer, make_scheduler
from hermes_model.training.recipe import Recipe
from hermes_model.training.run_types import RunOptions, TrainingDiverged, TrainResult
from hermes_model.training.sampling import Batch, MixedBatchSampler, make_loader

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


@dataclass
class _Window:
    """Sums over the iterations since the last log row."""

    count: int = 0
    sums: torch.Tensor | None = None  # (3,) total, bce, dice on the training device
    wait: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, terms: LossTerms) -> None:
        values = torch.stack([terms.total.detach(), terms.bce, terms.dice]).float()
        self.sums = values if self.sums is None else self.sums + values
        self.count += 1


def _precision(amp: str, device: torch.device, model: torch.nn.Module) -> str:
    """What training and validation compute in (``engines.precision``: measured per device)."""
    from hermes_model.engines.precision import resolve_training_precision

    return resolve_training_precision(amp, device, model)


class Trainer:
    """A prepared run: call :meth:`run` once."""

    def __init__(
        self, recipe: Recipe, output_dir: Path, options: RunOptions, context: DistContext
    ) -> None:
        self.recipe, self.dir, self.options, self.ctx = recipe, output_dir, options, context
        self.device = context.device
        self.total = recipe.train.iterations if options.iterations is None else options.iterations
        self.incremental = options.mode == "incremental" or (
            options.mode == "train" and recipe.train.trainable == "new_tasks"
        )
        self._check_output()
        spec = options.init_weights or recipe.train.init_from
        self.start = prepare.load_start(spec, context) if spec else None  # before slow caching
        self.data = prepare.prepare_data(recipe, context, options.progress)
        # On CPU, channels_last_3d makes the backward pass of narrow 3D convolutions ~10x faster
        # (oneDNN's weight-gradient kernels); on CUDA it slows instance norm, so not there.
        self.memory_format = (
            torch.channels_last_3d if self.device.type == "cpu" else torch.contiguous_format
        )
        model = prepare.make_model(recipe, self.data.tasks, self.start).to(self.device)
        self.model = model.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self.trainable = self._trainable_parameters()
        self.groups = self._task_groups()
        self._build_optimisation()
        self._build_stream()
        self.iteration, self.validated_at, self.check_count = 0, -1, 0
        self.best_dice: float | None = None
        self.best_iteration: int | None = None
        self.final_loss: float | None = None
        self.last_val: dict[str, float] = {}
        self.started, self.base_seconds, self.clock = utc_now(), 0.0, time.perf_counter()
        resumed = options.resume and (self.dir / "state.safetensors").is_file()
        if options.resume and not resumed:
            log.warning("%s holds no saved state: starting a new run", self.dir)
        if resumed:
            self._resume()
        self.runlog = RunLog(self.dir, self.iteration if resumed else None) if self.main else None
        find_unused = not prepare.every_parameter_used(self.model.config)
        self.net = wrap_model(
            self.model if self.supervised is None else self.supervised, context, find_unused
        )
        if recipe.train.compile and self.total > self.iteration:
            log.info("train.compile: compiling the training step (the first iteration: minutes)")
            # Only the step's network: the state, the EMA and validation keep the eager modules.
            self.net = cast(nn.Module, torch.compile(self.net))

    @property
    def main(self) -> bool:
        return self.ctx.is_main

    @property
    def export_model(self) -> SegmentationNet:
        """The weights that are validated and written: the EMA when it is on."""
        return cast(SegmentationNet, self.ema.module) if self.ema is not None else self.model

    def seconds(self) -> float:
        return self.base_seconds + time.perf_counter() - self.clock

    # -- set-up ---------------------------------------------------------------------------

    def _check_output(self) -> None:
        if (self.dir / "state.safetensors").is_file() and not self.options.resume:
            raise ConfigError(
                f"{self.dir} already holds a training run (state.safetensors); pass --resume "
                "to continue it, or choose another --output"
            )
        if self.main:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:  # a file or a device node at that path, a read-only disk
                raise OutputError(
                    f"{self.dir}: cannot create the run folder ({error.strerror or error}); "
                    "choose another --output"
                ) from error

    def _trainable_parameters(self) -> list[nn.Parameter]:
        if not self.incremental:
            self.model.train()
            return list(self.model.parameters())
        assert self.start is not None  # _check_options: incremental needs weights
        if len(self.model.task_ids) == len(self.start.model.task_ids):
            raise ConfigError(
                "every task of the recipe's datasets is already in the starting weights; "
                "incremental learning needs new tasks (use hermes finetune to retrain old ones)"
            )
        params = prepare.freeze_all_but_new_tasks(self.model)
        # Eval mode: no layer may update running statistics or drop units in frozen parts.
        self.model.eval()
        self.reference = {k: v.detach().clone() for k, v in self.start.model.state_dict().items()}
        return params

    def _task_groups(self) -> dict[str, list[str]]:
        """Groups written to the checkpoints: the datasets' task sets (when trained), then the
        starting weights' other groups."""
        groups = self.data.groups if self.total > 0 or self.start is None else {}
        if self.start is not None:
            groups = {
                **groups,
                **{k: v for k, v in self.start.task_groups.items() if k not in groups},
            }
        return groups

    def _build_optimisation(self) -> None:
        r = self.recipe
        self.supervised = None  # auxiliary heads of deep supervision, trained and not exported
        if r.loss.deep_supervision:
            self.supervised = DeepSupervised(self.model, r.loss.deep_supervision).to(self.device)
            self.trainable += list(self.supervised.project.parameters())
        self.optimizer = make_optimizer(self.trainable, r.optimizer)
        self.scheduler = make_scheduler(self.optimizer, r.schedule, max(1, self.total))
        self.ema = ModelEMA(self.model, r.ema.decay) if r.ema.enabled else None
        self.frozen_pairs = []
        if self.ema is not None:
            pairs = zip(self.ema.module.parameters(), self.model.parameters(), strict=True)
            self.frozen_pairs = [(e, p) for e, p in pairs if not p.requires_grad]
        cuda = self.device.type == "cuda"
        self.precision = _precision(r.train.amp, self.device, self.model)
        dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
        self.amp_dtype = dtypes.get(self.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and self.precision == "fp16")
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])
        self.pos_weight = prepare.loss_pos_weights(r, self.model.task_ids, self.device)

    def _build_stream(self) -> None:
        r, ctx = self.recipe, self.ctx
        if r.train.batch_size % ctx.world_size:
            raise ConfigError(
                f"train.batch_size {r.train.batch_size} is the global batch; it must divide "
                f"evenly over {ctx.world_size} processes"
            )
        self.local_batch = r.train.batch_size // ctx.world_size
        seed = int(np.random.SeedSequence([r.seed, ctx.rank, 7]).generate_state(1)[0])
        rows = self.model.modalities
        self.augmenter = Augmenter(
            r.augment, r.preprocess.patch_size, seed, self.device, rows,
            *mirror_partners(r.augment, r.preprocess.orientation, self.model.task_ids),
        )  # fmt: skip
        self.sampler = MixedBatchSampler(
            self.data.train, self.model.task_ids, self.augmenter.input_size,
            weights=[e.weight for e in r.datasets], foreground_fraction=r.train.foreground_fraction,
            foreground_weights=r.train.foreground_weights,
            seed=r.seed, rank=ctx.rank, world_size=ctx.world_size, modalities=rows,
        )  # fmt: skip
        self.window = WindowSettings(
            patch_size=r.preprocess.patch_size,
            overlap=r.validation.overlap,
            batch_size=1 if self.device.type == "cpu" else 2,
            precision=self.precision,
        )

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        stop = self.total
        if self.options.stop_after:
            stop = min(self.total, self.iteration + self.options.stop_after)
        self.clock = time.perf_counter()
        view = LiveView(self.total, self.iteration, self.options.progress and self.main)
        try:
            position = self._train_until(stop, view)
        finally:
            view.stop()
        completed = self.iteration >= self.total
        if completed and self.validated_at != self.iteration:
            self._validate()
        if completed and self.incremental:
            run_validation.check_old_outputs(self)
        self._checkpoint(position)
        if self.main and self.runlog is not None:
            plot_curves(self.runlog, self.dir / "curves.png", self.recipe.name)
        best = self.dir / "best.safetensors"
        return TrainResult(
            self.dir, self.iteration, completed,
            self.dir / "last.safetensors" if self.main else None,
            best if self.main and best.is_file() else None,
            self.best_dice, self.best_iteration, dict(self.last_val), self.final_loss,
            self.seconds(), self.model,
        )  # fmt: skip

    def _train_until(self, stop: int, view: LiveView) -> int:
        """Iterate up to ``stop``; return the sampler position after the last consumed batch."""
        position = self.sampler.position
        if self.iteration >= stop:
            return position
        t = self.recipe.train
        loader = make_loader(
            self.sampler, self.local_batch, t.num_workers, pin_memory=self.device.type == "cuda"
        )
        batches = iter(loader)
        window = _Window()
        log_every = max(1, t.log_every)
        while self.iteration < stop:
            waited = time.perf_counter()
            batch = next(batches)
            window.wait += time.perf_counter() - waited
            window.add(self._step(batch))
            self.iteration += 1
            position = batch.next_position
            if self.iteration % log_every == 0 or self.iteration == stop:
                self._log(window, view)
                window = _Window()
            if self._due(self.recipe.validation.every):
                self._validate()
                view.update(self.iteration, val=self._last_mean())
            if self._due(t.checkpoint_every) and self.iteration < stop:
                self._checkpoint(position)
        del batches, loader  # stop the workers before validation and saving
        return position

    def _due(self, every: int) -> bool:
        return every > 0 and self.iteration % every == 0

    def _step(self, batch: Batch) -> LossTerms:
        """One optimiser step on ``batch``; returns the loss terms (on the device)."""
        r = self.recipe
        batch = batch.to(self.device, non_blocking=True)
        # A sample mirrored left-right is asked for each lateral task's partner.
        image, targets, task_idx = self.augmenter.with_tasks(
            batch.image, batch.targets, batch.modality_idx, batch.task_idx
        )
        image = image.contiguous(memory_format=self.memory_format)
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            out = self.net(image, task_idx, batch.modality_idx)

        def loss(logits: torch.Tensor, truth: torch.Tensor) -> LossTerms:
            return bce_dice_loss(
                logits, truth, batch.loss_mask, r.loss.lambda_dice, r.loss.dice_smooth,
                task_idx=task_idx, reduction=r.loss.dice_reduction,
                pos_weight=self._pair_pos_weights(task_idx),
            )  # fmt: skip

        if self.supervised is None:
            terms = loss(out, targets)
        else:
            logits, aux = out
            terms = deep_supervision_loss(logits, aux, r.loss.deep_supervision, targets, loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        if r.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, r.train.grad_clip)
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
            with torch.no_grad():
                for ema_p, p in self.frozen_pairs:
                    ema_p.copy_(p)  # d*x + (1-d)*x can round away from x; frozen means frozen
        return terms

    def _pair_pos_weights(self, task_idx: torch.Tensor) -> torch.Tensor | None:
        """(B, T) BCE foreground weight of each task slot (padded slots: any; they are masked)."""
        return None if self.pos_weight is None else self.pos_weight[task_idx.clamp(min=0)]

    def _log(self, window: _Window, view: LiveView) -> None:
        assert window.sums is not None
        n, elapsed = window.count, max(time.perf_counter() - window.start, 1e-9)
        sums = window.sums.tolist()
        loss, bce, dice, wait = self.ctx.mean([s / n for s in sums] + [window.wait / elapsed])
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss} at iteration {self.iteration}; lower optimizer.lr, set "
                "train.grad_clip (e.g. 1.0), or use amp = 'bf16' instead of 'fp16'"
            )
        self.final_loss = loss
        rate = n / elapsed
        if self.runlog is not None:
            self.runlog.add({
                "kind": "train", "iteration": self.iteration,
                "epoch": round(self.iteration / self.recipe.train.iterations_per_epoch, 4),
                "loss": loss, "bce": bce, "dice_loss": dice, "lr": self.last_lr,
                "patches_per_s": rate * self.recipe.train.batch_size, "data_wait": wait,
                "elapsed_s": round(self.seconds(), 3), "time": utc_now(),
            })  # fmt: skip
        view.update(self.iteration, loss=loss, lr=self.last_lr, rate=rate, val=self._last_mean())

    def _last_mean(self) -> float:
        return float(np.mean(list(self.last_val.values()))) if self.last_val else math.nan

    # -- validation and files ---------------------------------------------------------------

    def _validate(self) -> None:
        """Validate on rank 0 (the others wait); keep ``best.safetensors`` up to date."""
        self.validated_at = self.iteration  # before best.safetensors records it
        if self.main:
            run_validation.validate_and_keep_best(self)
        self.ctx.barrier()

    def _checkpoint(self, position: int) -> None:
        checkpointing.checkpoint(self, position)

    def _resume(self) -> None:
        checkpointing.resume(self)
