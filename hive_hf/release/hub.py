"""Publishing a run to the Hub: one commit per finished stage and repository, tagged `stage<k>`."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import get_session, hf_raise_for_status, validate_repo_id
from tqdm.auto import tqdm
from transformers.utils import logging

from ..configuration_hive import HiveConfig
from ..runs.layout import HIVE_STAGE_MARKER, RunLayout, stage_tag
from ..runs.pickles import pickled_files
from .cards import REPO_LABELS, CardOptions, as_hub_id
from .errors import ReleaseError
from .folders import write_stage_folders
from .records import StageRecord, finished_stages, stage_record_from_folder
from .results import find_results

logger = logging.get_logger(__name__)

# A stage commit replaces the weights: stale shards of an earlier release must not stay next to new weights.
_WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin"]
@dataclass
class ReleaseCommit:
    """One stage of one repository: the folder it was built from and, when pushed, its commit."""

    kind: str
    repo_id: str
    stage: int
    tag: str
    folder: Path
    commit: str | None = None


def _full_repo_id(repo_id: str, namespace: str | None) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ReleaseError(f"{repo_id!r} is not a valid repo id: {err}") from err
    return repo_id if "/" in repo_id or namespace is None else f"{namespace}/{repo_id}"


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _released_commit(api: HfApi, repo_id: str, tag: str, folder: Path, revision: str | None) -> str | None:
    """The commit `tag` points to, if it is on the target branch and holds exactly `folder`'s files (and no stale
    weights): a release run again, e.g. after an interruption, then adds no commit for that stage."""
    commit = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}.get(tag)
    if commit is None or commit not in {c.commit_id for c in api.list_repo_commits(repo_id, revision=revision)}:
        return None
    remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(f, RepoFile)}
    local = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    for name, path in local.items():
        entry, data = remote.get(name), path.read_bytes()
        if entry is None or (entry.lfs["sha256"] != hashlib.sha256(data).hexdigest() if entry.lfs is not None
                             else entry.blob_id != _git_blob_id(data)):
            return None
    stale = [n for n in remote if n not in local and any(fnmatch.fnmatch(n, p) for p in _WEIGHT_PATTERNS)]
    return None if stale else commit


def tag_commit(api: HfApi, repo_id: str, tag: str, commit: str) -> None:
    """Point `tag` at `commit`, moving it (with a warning) if it points elsewhere."""
    tags = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}
    if tags.get(tag) == commit:
        return
    if tag in tags:
        logger.warning(f"{repo_id}: moving tag {tag} from {tags[tag][:8]} to {commit[:8]}.")
        api.delete_tag(repo_id, tag=tag)
    api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"HIVE pre-training {tag}")


def validate_card(card: ModelCard, api: HfApi) -> None:
    """The Hub's own check of a card's front matter (what `ModelCard.validate` asks), asked of the endpoint the release
    pushes to: huggingface_hub 1.x's `validate` always asks huggingface.co, whatever `HF_ENDPOINT` says."""
    response = get_session().post(f"{api.endpoint}/api/validate-yaml", headers={"Accept": "text/plain"},
                                  json={"repoType": "model", "content": str(card)})
    if response.status_code == 400:
        raise ValueError(response.text)
    hf_raise_for_status(response)


def _push_stage(api: HfApi, repo_id: str, tag: str, folder: Path, revision: str | None, message: str) -> str:
    """Commit `folder` to `repo_id` and tag the commit; returns it. A stage released before is left as it is."""
    try:
        validate_card(ModelCard.load(folder / "README.md"), api)
    except ValueError as err:
        raise ReleaseError(f"The model card for {repo_id} fails the Hub's validation: {err}") from err
    pickles = pickled_files(folder)
    if pickles:
        raise ReleaseError(f"Refusing to push pickles to {repo_id}: {pickles} in {folder}.")
    commit = _released_commit(api, repo_id, tag, folder, revision)
    if commit is not None:
        logger.info(f"{repo_id}: {tag} is already released as commit {commit[:8]}")
        return commit
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, revision=revision,
                               delete_patterns=_WEIGHT_PATTERNS).oid
    tag_commit(api, repo_id, tag, commit)
    logger.info(f"{repo_id}: {tag} is commit {commit[:8]}")
    return commit


@contextmanager
def _work_dir(dry_run_dir: Path | None) -> Iterator[Path]:
    if dry_run_dir is not None:
        dry_run_dir.mkdir(parents=True, exist_ok=True)
        yield dry_run_dir
    else:
        with tempfile.TemporaryDirectory(prefix="hive-release-") as tmp:
            yield Path(tmp)


def _release_repos(repo_id: str, encoder_repo_id: str | None, stock_encoder_repo_id: str | None,
                   namespace: str | None) -> dict[str, str]:
    """The full ids of the repositories a release writes, by kind (`full`, `encoder`, `stock`); all distinct."""
    repos = {"full": _full_repo_id(repo_id, namespace)}
    repos["encoder"] = _full_repo_id(encoder_repo_id or f"{repo_id}-encoder", namespace)
    if stock_encoder_repo_id:
        repos["stock"] = _full_repo_id(stock_encoder_repo_id, namespace)
    if len(set(repos.values())) != len(repos):
        raise ReleaseError(f"The repositories must be distinct, got {repos}.")
    return repos


def _create_repos(api: HfApi, repos: dict[str, str], private: bool | None, revision: str | None) -> None:
    """Create the release's repositories (and the `revision` branch) where missing; say where each one is."""
    for kind, rid in repos.items():
        url = api.create_repo(rid, private=private, exist_ok=True)
        if private is not None and api.model_info(rid).private != private:
            logger.warning(f"{rid} already exists and stays {'private' if not private else 'public'}: --private "
                           "applies to new repositories only.")
        if revision and not revision.startswith("refs/pr/"):
            api.create_branch(rid, branch=revision, exist_ok=True)
        logger.info(f"{REPO_LABELS[kind]}: {url}")


def release_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    encoder_repo_id: str | None = None,
    stock_encoder_repo_id: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
    dry_run: bool = False,
    dry_run_dir: str | os.PathLike | None = None,
    license: str = "other",
    datasets: Sequence[str] = (),
    vision_base_model: str | None = None,
    text_base_model: str | None = None,
    results_files: Sequence[str | os.PathLike] = (),
    template_dir: str | os.PathLike | None = None,
) -> list[ReleaseCommit]:
    """Publish a run_pretrain output folder: the full model to `repo_id`, the encoder to `encoder_repo_id` (default
    `<repo_id>-encoder`) and, if given, the stock-format encoder to `stock_encoder_repo_id`.

    Each finished stage is one commit per repository, made in stage order and tagged `stage<k>`. `private`,
    `revision` (the branch to commit to, created if missing) and `token` behave as in `huggingface_hub`; repo ids
    without a namespace go to the token's user. With `dry_run`, nothing is sent: the folders are written under
    `dry_run_dir` (default `<run_dir>/release`) as `<repo_id>/stage<k>/`. Base models default to the backbones'
    `_name_or_path` when that is a Hub id. Returns one `ReleaseCommit` per repository and stage.
    """
    run_dir = Path(run_dir)
    stages = finished_stages(run_dir)
    if not stages:
        raise ReleaseError(f"{run_dir} holds no finished stage (a stage<k> folder with {HIVE_STAGE_MARKER}); is it a "
                           "run_pretrain --output_dir?")
    api = None
    namespace = None
    if not dry_run:
        api = HfApi(token=token)
        namespace = api.whoami()["name"]  # fails first, with the client's own message, when there is no token
    repos = _release_repos(repo_id, encoder_repo_id, stock_encoder_repo_id, namespace)

    last_config = HiveConfig.from_pretrained(stages[max(stages)])
    options = CardOptions(
        license=license,
        datasets=list(datasets),
        vision_base_model=vision_base_model or as_hub_id(last_config.vision_config._name_or_path),
        text_base_model=text_base_model or as_hub_id(last_config.text_config._name_or_path),
        repos=repos,
        results=find_results(run_dir, results_files),
        template_dir=template_dir,
    )
    stand_ins = RunLayout(run_dir).backbones_dir.resolve()
    for part, name, config in (("vision", options.vision_base_model, last_config.vision_config),
                               ("text", options.text_base_model, last_config.text_config)):
        if name is not None:
            continue
        # the tiny stand-ins a demo run writes for itself have no Hub id to name: nothing to fix, so no warning
        if Path(config._name_or_path or "").resolve().is_relative_to(stand_ins):
            logger.info(f"The {part} backbone is the run's tiny stand-in: the cards name no {part} base model.")
        else:
            logger.warning(f"The {part} backbone is a local checkpoint: the cards name no {part} base model (pass "
                           f"--{part}_base_model with its Hub id).")

    if api is not None:
        _create_repos(api, repos, private, revision)

    dry_dir = Path(dry_run_dir or run_dir / "release") if dry_run else None
    return _release_stages(run_dir, stages, repos, options, api, dry_dir, revision, commit_message)


def _release_stages(run_dir: Path, stages: dict[int, Path], repos: dict[str, str], options: CardOptions,
                    api: HfApi | None, dry_dir: Path | None, revision: str | None,
                    commit_message: str | None) -> list[ReleaseCommit]:
    """Write each finished stage's folders (one per repository) and, with an `api`, push each as one commit tagged
    `stage<k>`, in stage order; without one, keep the folders under `dry_dir`."""
    commits: list[ReleaseCommit] = []
    records: list[StageRecord] = []
    with _work_dir(dry_dir) as work, tqdm(total=len(stages) * len(repos), desc="HIVE release",
                                          unit="folder" if api is None else "commit") as progress:
        for stage, stage_dir in stages.items():
            records.append(stage_record_from_folder(stage_dir, stage))
            tag = stage_tag(stage)
            folders = {kind: work / rid / tag for kind, rid in repos.items()}
            for folder in folders.values():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            progress.set_postfix_str(f"writing {tag}")
            write_stage_folders(stage_dir, folders, records, options, final=stage == max(stages),
                                loss_curve=RunLayout(run_dir).loss_curves)
            for kind, folder in folders.items():
                commit = ReleaseCommit(kind, repos[kind], stage, tag, folder)
                if api is not None:
                    progress.set_postfix_str(f"pushing {repos[kind]}@{tag}")
                    message = f"{commit_message} ({tag})" if commit_message else f"Release HIVE {tag}"
                    commit.commit = _push_stage(api, repos[kind], tag, folder, revision, message)
                commits.append(commit)
                progress.update()
            if api is not None:
                for folder in folders.values():
                    shutil.rmtree(folder)
    return commits
