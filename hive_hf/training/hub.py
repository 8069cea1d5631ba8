"""HiveHubCallback: Trainer pushes (`TrainingArguments(push_to_hub=True)`) that carry HIVE's model code and card."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate.utils import extract_model_from_parallel
from huggingface_hub import CommitInfo, HfApi, ModelCard
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.dynamic_module_utils import get_relative_import_files

from ..release.cards import CardOptions, as_hub_id, render_model_card
from ..release.records import finished_stages, stage_record_from_folder, stage_record_from_trainer


def _write_if_changed(path: Path, data: bytes) -> None:
    # Atomic (a Trainer upload may be reading the folder) and a no-op when nothing changed. The temporary name
    # starts with "_", which the Trainer's uploads ignore.
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(f"_{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_model_code(model: torch.nn.Module, folder: str | os.PathLike) -> list[Path]:
    """Copy the file defining `model`'s class and its relative imports (for HIVE: `modeling_hive.py` and
    `configuration_hive.py`) into `folder`, as `save_pretrained` does for a class registered for an Auto class."""
    source = Path(sys.modules[type(model).__module__].__file__)
    written = []
    for path in [source, *map(Path, get_relative_import_files(str(source)))]:
        _write_if_changed(Path(folder) / path.name, path.read_bytes())
        written.append(Path(folder) / path.name)
    return written


class HiveHubCallback(TrainerCallback):
    """Makes `TrainingArguments(push_to_hub=True)` pushes of a HIVE model load with remote code and carry HIVE's card.

    At every save the Trainer copies only the weights and `config.json` from the checkpoint into `args.output_dir`,
    saves the processor there, and uploads the folder: the `modeling_hive.py` / `configuration_hive.py` that the
    config's `auto_map` points to would be missing from those commits. At each `on_push_begin` this callback writes
    them, and the model card (`hive_full.md`), into `args.output_dir`.

    The end-of-training push (`Trainer.push_to_hub`, which `save_model` triggers) replaces README.md with the
    Trainer's generic card right before uploading and offers no hook after it; call `push_card(trainer)` once it
    returned to put HIVE's card back (one small commit).

    Args:
        options: card metadata (license, datasets, base models); base models default to the backbones'
            `_name_or_path` when it is a Hub id.
        run_dir: a run_pretrain output folder whose finished stages the card also describes. Default: the parent of
            `args.output_dir` when that folder is named `stage<k>`.
    """

    def __init__(self, options: CardOptions | None = None, run_dir: str | os.PathLike | None = None):
        self.options = options or CardOptions()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._namespaces: dict[str | None, str] = {}

    def _repo_id(self, args: Any) -> str:
        repo_id = args.hub_model_id or Path(args.output_dir).absolute().name  # as `Trainer.init_hf_repo` names it
        if "/" in repo_id:
            return repo_id
        if args.hub_token not in self._namespaces:
            self._namespaces[args.hub_token] = HfApi(token=args.hub_token).whoami()["name"]
        return f"{self._namespaces[args.hub_token]}/{repo_id}"

    def render_card(self, args: Any, state: Any, model: torch.nn.Module, repo_id: str | None = None) -> ModelCard:
        """HIVE's card for what the Trainer is pushing: the current stage from `state`, earlier ones from the run."""
        model = extract_model_from_parallel(model)
        config = model.config
        stage = config.training_stage
        output_dir = Path(args.output_dir)
        run_dir = self.run_dir
        if run_dir is None and re.fullmatch(r"stage\d", output_dir.name):
            run_dir = output_dir.parent
        earlier = finished_stages(run_dir, warn=False) if run_dir is not None else {}
        records = [stage_record_from_folder(folder, k) for k, folder in earlier.items() if stage is None or k < stage]
        records.append(stage_record_from_trainer(stage, args, state))
        repo_id = repo_id or self._repo_id(args)
        options = dataclasses.replace(
            self.options,
            vision_base_model=self.options.vision_base_model or as_hub_id(config.vision_config._name_or_path),
            text_base_model=self.options.text_base_model or as_hub_id(config.text_config._name_or_path),
            repos={**self.options.repos, "full": repo_id},
        )
        note = (f"Pushed by the Trainer during pre-training stage {stage}, at step {state.global_step}."
                if stage else f"Pushed by the Trainer at step {state.global_step}.")
        return render_model_card(
            "full", config, records, repo_id=repo_id, revision=args.hub_revision or "main", options=options,
            revision_note=note, num_parameters=model.num_parameters(),
            evaluation_note="No evaluation results: this checkpoint was pushed during training.",
        )

    def on_push_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or model is None:
            return
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_model_code(extract_model_from_parallel(model), folder)
        card = self.render_card(args, state, model)
        _write_if_changed(folder / "README.md", str(card).encode())

    def push_card(self, trainer: transformers.Trainer) -> CommitInfo | None:
        """Replace the generic card of the Trainer's end-of-training push by HIVE's; call after `save_model` /
        `push_to_hub` returned. Returns the commit, or None on other processes or without `push_to_hub`."""
        args = trainer.args
        if not args.push_to_hub or not trainer.is_world_process_zero():
            return None
        repo_id = getattr(trainer, "hub_model_id", None) or self._repo_id(args)
        card = self.render_card(args, trainer.state, trainer.model, repo_id=repo_id)
        path = Path(args.output_dir) / "README.md"
        _write_if_changed(path, str(card).encode())
        return HfApi(token=args.hub_token).upload_file(
            path_or_fileobj=str(path), path_in_repo="README.md", repo_id=repo_id, revision=args.hub_revision,
            commit_message="HIVE model card",
        )
