"""Pushes during training that put neither a secret nor a pickle on the Hub: `HubPushCallback`, and
`HiveHubCallback`, which adds HIVE's model code and card.

`TrainingArguments(push_to_hub=True)` makes the Trainer upload its output folder at every save and at the end, and
the Trainer writes `training_args.bin` into that folder first: its arguments pickled as they are, `hub_token`
included (`TrainingArguments.to_dict` masks the token; pickling does not). It offers no hook between writing that file
and uploading it, so these callbacks do the pushing instead, with `push_to_hub` left False:

- the token is handed to the callback and kept in memory (`hive_hf.cli.parsing.take_hub_token` takes `--hub_token`
  out of the parsed arguments); with none, the Hub client reads `HF_TOKEN` or the `hf auth login` token itself;
- what goes up is the output folder minus everything pickled (`PICKLE_PATTERNS`), with the arguments as
  `training_args.json`; `hub_strategy` "checkpoint"/"all_checkpoints", which upload optimizer and RNG pickles, are
  refused;
- every push is tagged with what it holds (`checkpoint-<step>`; at the end the output folder's name when it is a
  stage, `stage<k>`, else `final`), so that a card can show loading with a pinned revision.

The other `hub_*` settings (`hub_model_id`, `hub_private_repo`, `hub_revision`, `hub_strategy`,
`hub_always_push`) are read from the arguments and mean what they mean for the Trainer.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate.utils import extract_model_from_parallel
from huggingface_hub import CommitInfo, HfApi, ModelCard, save_torch_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy
from transformers.utils import logging

from ..runs.layout import stage_of, write_training_args
from ..runs.pickles import PICKLE_PATTERNS, check_hub_settings, pickled_files
from ..training.lora import merged_lora_state_dict
from .cards import CardOptions, as_hub_id, render_model_card
from .hub import tag_commit
from .records import finished_stages, stage_record_from_folder, stage_record_from_trainer

logger = logging.get_logger(__name__)

# What an upload of the output folder leaves out: temporary files (as the Trainer's uploads do), checkpoint folders
# (resume state, kept locally) and pickles.
UPLOAD_IGNORE_PATTERNS = ["_*", f"{PREFIX_CHECKPOINT_DIR}-*", *PICKLE_PATTERNS]
# A checkpoint's Trainer state: for resuming, not for users of the pushed model.
_RESUME_STATE = "trainer_state.json"


def _write_if_changed(path: Path, data: bytes) -> None:
    # Atomic (an upload may be reading the folder) and a no-op when nothing changed. The temporary name starts with
    # "_", which uploads ignore.
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


def _has_lora(model: torch.nn.Module) -> bool:
    from peft import LoraModel

    return any(isinstance(module, LoraModel) for module in model.modules())


def final_tag(args: TrainingArguments) -> str:
    """The tag of the end-of-training push: the output folder's name when it is a stage (`stage<k>`), else `final`."""
    name = Path(args.output_dir).name
    return name if stage_of(name) is not None else "final"


class HubPushCallback(TrainerCallback):
    """Push the Trainer's output folder to the Hub as `TrainingArguments(push_to_hub=True)` would, without the token on
    disk and without a pickle (see the module docstring). Leave `push_to_hub` False; set `hub_model_id` and the other
    `hub_*` settings as usual.

    At each save (`hub_strategy="every_save"`, the default) the checkpoint's files, minus its resume state, are copied
    into `args.output_dir` and uploaded in the background, tagged `checkpoint-<step>`; a save while the previous upload
    runs is skipped unless `hub_always_push`. Call `push_final(trainer)` after `trainer.save_model()` for the
    end-of-training push (it waits for the others).

    Args:
        token: a Hub token with write access, kept in memory only. Default: `HF_TOKEN` or the `hf auth login` token.
    """

    def __init__(self, token: str | None = None):
        self._token = token
        self._api: HfApi | None = None
        self._repos: dict[str, str] = {}
        self._pending: Future | None = None

    @property
    def api(self) -> HfApi:
        # One client: its one worker thread runs the background uploads in order.
        if self._api is None:
            self._api = HfApi(token=self._token)
        return self._api

    def repo_id(self, args: TrainingArguments) -> str:
        """The repository `args` push to (`hub_model_id`, default the output folder's name, in the token's namespace
        unless it names one), created on first use as the Trainer creates it (`hub_private_repo`)."""
        name = args.hub_model_id or Path(args.output_dir).absolute().name
        if name not in self._repos:
            self._repos[name] = self.api.create_repo(name, private=args.hub_private_repo, exist_ok=True).repo_id
        return self._repos[name]

    def prepare_folder(self, args: TrainingArguments, state: TrainerState, model: torch.nn.Module | None, tag: str,
                       trainer: transformers.Trainer | None = None) -> None:
        """Write what a push adds to `args.output_dir`: `training_args.json`; at the end (`trainer` given) the Trainer's
        model card, as its own end-of-training push writes it. Subclasses add their files."""
        write_training_args(args, args.output_dir)
        if trainer is not None:
            trainer.create_model_card(model_name=self.repo_id(args).split("/")[-1])

    def _upload(self, args: TrainingArguments, message: str, tag: str) -> CommitInfo:
        repo_id, folder = self.repo_id(args), Path(args.output_dir)
        commit = self.api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message,
                                        revision=args.hub_revision, ignore_patterns=UPLOAD_IGNORE_PATTERNS)
        tag_commit(self.api, repo_id, tag, commit.oid)
        logger.info(f"pushed {folder} to {repo_id}, tag {tag} (commit {commit.oid[:8]})")
        return commit

    def wait(self) -> None:
        """Wait for the background upload, if any; its error, if any, is raised here."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if args.push_to_hub:
            raise ValueError(
                f"{type(self).__name__} does the pushing: with `push_to_hub=True` the Trainer would also upload its "
                "output folder, with training_args.bin (its arguments, pickled). Set push_to_hub=False and keep the "
                "hub_* settings."
            )
        check_hub_settings(args)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or args.hub_strategy == HubStrategy.END:
            return
        if self._pending is not None and not self._pending.done() and not args.hub_always_push:
            return  # as the Trainer does: the previous push is still running
        tag = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        checkpoint, folder = Path(args.output_dir) / tag, Path(args.output_dir)
        skip = {_RESUME_STATE, *pickled_files(checkpoint)}
        if model is not None and _has_lora(model := extract_model_from_parallel(model)):
            # a LoRA stage saves its adapters apart from the weights: the push gets the plain model they make
            weights = list(checkpoint.glob("model*.safetensors*"))
            skip.update(path.name for path in weights)
            saved = {}
            for path in weights:
                if path.suffix == ".safetensors":
                    saved.update(load_file(path))
            save_torch_state_dict(merged_lora_state_dict(saved, model), folder)
        for path in checkpoint.iterdir():
            if path.is_file() and path.name not in skip:
                shutil.copyfile(path, folder / path.name)
        self.prepare_folder(args, state, model, tag)
        message = f"Training in progress, step {state.global_step}"
        self._pending = self.api.run_as_future(self._upload, args, message, tag)

    def push_final(self, trainer: transformers.Trainer, commit_message: str = "End of training") -> CommitInfo | None:
        """The end-of-training push of `trainer.args.output_dir` (call after `trainer.save_model()`), tagged
        `final_tag(args)`. Returns the commit, or None on processes other than the main one."""
        if not trainer.is_world_process_zero():
            return None
        self.wait()
        args, tag = trainer.args, final_tag(trainer.args)
        self.prepare_folder(args, trainer.state, trainer.model, tag, trainer=trainer)
        return self._upload(args, commit_message, tag)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self.wait()


class HiveHubCallback(HubPushCallback):
    """`HubPushCallback` for a HIVE model: every push also carries the model code its config's `auto_map` names
    (`modeling_hive.py`, `configuration_hive.py`) and HIVE's model card (`hive_full.md`), whose loading snippet pins
    the push's tag next to `trust_remote_code=True`.

    Args:
        options: card metadata (license, datasets, base models); base models default to the backbones'
            `_name_or_path` when it is a Hub id.
        run_dir: a run_pretrain output folder whose finished stages the card also describes. Default: the parent of
            `args.output_dir` when that folder is named `stage<k>`.
        token: as for `HubPushCallback`.
    """

    def __init__(self, options: CardOptions | None = None, run_dir: str | os.PathLike | None = None,
                 token: str | None = None):
        super().__init__(token=token)
        self.options = options or CardOptions()
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def render_card(self, args: Any, state: Any, model: torch.nn.Module, repo_id: str, revision: str) -> ModelCard:
        """HIVE's card for what is being pushed: the current stage from `state`, earlier ones from the run."""
        model = extract_model_from_parallel(model)
        config = model.config
        stage = config.training_stage
        output_dir = Path(args.output_dir)
        run_dir = self.run_dir
        if run_dir is None and stage_of(output_dir.name) is not None:
            run_dir = output_dir.parent
        earlier = finished_stages(run_dir, warn=False) if run_dir is not None else {}
        records = [stage_record_from_folder(folder, k) for k, folder in earlier.items() if stage is None or k < stage]
        records.append(stage_record_from_trainer(stage, args, state))
        options = dataclasses.replace(
            self.options,
            vision_base_model=self.options.vision_base_model or as_hub_id(config.vision_config._name_or_path),
            text_base_model=self.options.text_base_model or as_hub_id(config.text_config._name_or_path),
            repos={**self.options.repos, "full": repo_id},
        )
        note = (f"Pushed by the Trainer during pre-training stage {stage}, at step {state.global_step}"
                if stage else f"Pushed by the Trainer at step {state.global_step}")
        return render_model_card(
            "full", config, records, repo_id=repo_id, revision=revision, options=options,
            revision_note=f"{note}; this revision is tagged `{revision}`.", num_parameters=model.num_parameters(),
            evaluation_note="No evaluation results: this checkpoint was pushed during training.",
        )

    def prepare_folder(self, args: TrainingArguments, state: TrainerState, model: torch.nn.Module | None, tag: str,
                       trainer: transformers.Trainer | None = None) -> None:
        super().prepare_folder(args, state, model, tag)  # not the Trainer's card: HIVE's replaces it
        if model is None:
            return
        folder = Path(args.output_dir)
        write_model_code(extract_model_from_parallel(model), folder)
        card = self.render_card(args, state, model, self.repo_id(args), revision=tag)
        _write_if_changed(folder / "README.md", str(card).encode())
