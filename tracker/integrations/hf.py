"""transformers: `CasCallback` logs each `checkpoint-N` folder the Trainer saves as version N of the
artifact `checkpoint` (a folder: files that did not change since the last save cost nothing), and
follows the Trainer's `save_total_limit` rotation by forgetting the versions whose folders it deleted.

    trainer = Trainer(..., callbacks=[CasCallback(run="bert-ft")])
    tracker.download("runs:/bert-ft/checkpoint@20", "restored/")

A pinned or aliased version is never forgotten. `weights_only=True` logs only the model's weight files
(`model*.safetensors`, `pytorch_model*.bin`, adapters and shard indexes), not the optimizer,
scheduler and RNG state that make up most of a checkpoint folder.
"""

from __future__ import annotations

import glob
import os

from transformers import TrainerCallback

import tracker
from cas import Store

from ..run import Run

CHECKPOINT_PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR
# the model's weights (sharded ones with their index, adapters too), not the optimizer, scheduler or RNG state
WEIGHTS = ("model*.safetensors", "pytorch_model*.bin", "adapter_model*.safetensors", "adapter_model*.bin",
           "*.index.json")


class CasCallback(TrainerCallback):
    """Log the Trainer's checkpoints to a cas run, and forget the ones its rotation deletes."""

    def __init__(self, run: Run | str | None = None, *, name: str = "checkpoint", weights_only: bool = False,
                 store: Store | str | None = None):
        self._run, self.name, self.weights_only, self.store = run, name, weights_only, store

    def _open_run(self, args) -> Run:
        if not isinstance(self._run, Run):
            self._run = tracker.init(self._run or args.run_name or None, store=self.store)
        return self._run

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        run = self._open_run(args)
        folder = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}{state.global_step}")
        if os.path.isdir(folder):
            weights = sorted({p for pattern in WEIGHTS for p in glob.glob(os.path.join(folder, pattern))})
            run.log_artifact(weights if self.weights_only and weights else folder, name=self.name, kind="checkpoint",
                             step=state.global_step, metadata={"global_step": state.global_step, "epoch": state.epoch})
        self._follow_rotation(run, args.output_dir)
        return control

    def _follow_rotation(self, run: Run, output_dir: str) -> None:
        """Forget the versions whose checkpoint folder the Trainer deleted (a pinned or aliased one stays)."""
        pinned = {p.digest for p in run.store.pins()}
        aliased = {step for (name, _), step in run.records.aliases(run.name).items() if name == self.name}
        gone = [v for v in run.records.versions(run.name, self.name)
                if v.digest not in pinned and v.step not in aliased
                and not os.path.isdir(os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{v.step}"))]
        if gone:
            run.records.forget(gone)
