"""Pieces shared by every config: the trainer defaults and the `name:variant` argument parser."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, *, variants: tuple[str, ...]) -> str:
  """The variant named after the colon in `--config configs/x.py:variant` ('' for the default).

  Raises ValueError naming the valid variants for anything else.
  """
  variant = (arg or "").strip()
  if variant and variant not in variants:
    raise ValueError(f"unknown config variant {variant!r}; valid: {', '.join(variants)}")
  return variant


def trainer_config(
  *, steps: int, batch_size: int, learning_rate: float
) -> ml_collections.ConfigDict:
  """Defaults of `jhmr.train.train`: Adam, constant schedule, clipping 1.0, ema-pytorch EMA."""
  return ml_collections.ConfigDict(
    dict(
      train=dict(
        steps=steps,
        batch_size=batch_size,
        log_every=max(1, min(100, steps // 10)),
        checkpoint_every=max(1, min(1000, steps // 4)),
        keep_checkpoints=2,
        eval_every=0,
        progress=True,
        sync_every_step=True,  # False lets GPU/TPU dispatch run ahead (CPU always syncs)
        async_checkpoints=False,  # True overlaps writes; may then lose up to 2 intervals
        data_threads=2,  # input pipeline reader threads (none of these changes a batch)
        data_prefetch=4,  # batches prefetched
        data_workers=0,  # > 0: that many worker processes read and augment
        # 'replicated' or 'fsdp' (parameters, optimiser state and EMA sharded over the devices)
        param_sharding="replicated",
        fsdp_min_size=2**14,  # 'fsdp' leaves a leaf with fewer elements replicated
      ),
      optimizer=dict(
        name="adam",
        learning_rate=learning_rate,
        schedule="constant",
        warmup_steps=0,
        final_lr_fraction=0.0,
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,
        clip_norm=1.0,
        # Peak rate per parameter group of a task with `param_labels` (a group not named here
        # uses learning_rate); one schedule shape for all.
        group_learning_rates={},
      ),
      # ema_pytorch.EMA's arguments: ScoreHMR's beta and update_every, ema-pytorch's defaults for
      # the rest. beta=0 turns the EMA off (ema_params = params).
      ema=dict(
        beta=0.995,
        update_after_step=100,
        update_every=10,
        inv_gamma=1.0,
        power=2 / 3,
        min_value=0.0,
      ),
    )
  )
