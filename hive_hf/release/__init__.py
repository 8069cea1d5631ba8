"""Release HIVE models to the Hugging Face Hub, with model cards.

Reference: "Hierarchical Pre-Training of Vision Encoders with Large Language Models" (arXiv 2604.00086).

`hive-release RUN_DIR REPO_ID` (`hive_hf.cli.release`) publishes what a pre-training run wrote into RUN_DIR (the layout
of `hive_hf.runs.layout.RunLayout`):

- `REPO_ID`: the full model (`HiveForConditionalGeneration` + `HiveProcessor`; remote code);
- `REPO_ID-encoder` (or `--encoder_repo`): the encoder alone (`HiveVisionEncoderModel` + the tower's image processor;
  remote code), what users load with `AutoModel.from_pretrained(..., trust_remote_code=True)`;
- `--stock_encoder_repo`: optionally, the encoder as the stock transformers tower (`to_base_model()`, e.g.
  `SiglipVisionModel`), which loads with plain `AutoModel` and no remote code.

Every finished stage becomes one commit per repository, in stage order, tagged `stage1`, `stage2`, `stage3`; the last
stage is the branch head. `--dry-run` writes the exact folders locally instead of pushing.

One module per job: `records` (what each stage did), `results` (evaluation results as Markdown), `cards` (the Jinja
model cards), `folders` (what each commit holds), `hub` (commits and tags; never a pickle), `callbacks` (pushes during
training: `HubPushCallback`, `HiveHubCallback`). The pickle rules are `hive_hf.runs.pickles`.
"""

from .callbacks import HiveHubCallback, HubPushCallback, write_model_code
from .cards import CardOptions, as_hub_id, render_model_card
from .errors import ReleaseError
from .folders import write_stage_folders
from .hub import ReleaseCommit, release_run
from .records import (
    StageRecord,
    finished_stages,
    stage_record_from_folder,
    stage_record_from_trainer,
    training_hyperparameters,
)
from .results import find_results, results_markdown

__all__ = [
    "CardOptions",
    "HiveHubCallback",
    "HubPushCallback",
    "ReleaseCommit",
    "ReleaseError",
    "StageRecord",
    "as_hub_id",
    "find_results",
    "finished_stages",
    "release_run",
    "render_model_card",
    "results_markdown",
    "stage_record_from_folder",
    "stage_record_from_trainer",
    "training_hyperparameters",
    "write_model_code",
    "write_stage_folders",
]
