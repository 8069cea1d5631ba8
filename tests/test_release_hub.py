"""The commit and tag logic of `hive_hf.release.hub` on its own, against an in-memory stand-in for the `HfApi` calls it
makes: a stage is committed and tagged once, a rerun adds nothing, changed or stale files make a new commit and move
the tag. (tests/test_release.py runs the whole release through the real client against the LocalHub double.)"""

import fnmatch
import hashlib
import logging
from types import SimpleNamespace

import pytest
from huggingface_hub.hf_api import RepoFile

from hive_hf.release import ReleaseError
from hive_hf.release import hub as hub_module
from hive_hf.release.hub import _git_blob_id, _push_stage, tag_commit

REPO = "me/hive"


class FakeApi:
    """One repository: the target branch's history (newest last), tags, and every commit's files. `*.safetensors`
    files are listed as LFS files (sha256 and pointer), the rest as git blobs, as the Hub lists them."""

    def __init__(self):
        self.history: list[str] = []
        self.files: dict[str, dict[str, bytes]] = {}
        self.tags: dict[str, str] = {}
        self.uploads: list[dict] = []
        self.deleted_tags: list[str] = []

    def commit(self, files: dict[str, bytes], on_branch: bool = True) -> str:
        oid = hashlib.sha1(repr((len(self.files), sorted(files.items()))).encode()).hexdigest()
        self.files[oid] = dict(files)
        if on_branch:
            self.history.append(oid)
        return oid

    def list_repo_refs(self, repo_id):
        return SimpleNamespace(tags=[SimpleNamespace(name=n, target_commit=c) for n, c in self.tags.items()])

    def list_repo_commits(self, repo_id, revision=None):
        return [SimpleNamespace(commit_id=oid) for oid in reversed(self.history)]

    def list_repo_tree(self, repo_id, revision, recursive):
        entries = []
        for path, data in self.files[revision].items():
            lfs = None
            if path.endswith(".safetensors"):
                lfs = {"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 130}
            entries.append(RepoFile(path=path, size=len(data), oid=_git_blob_id(data) if lfs is None else "0" * 40,
                                    lfs=lfs))
        return entries

    def upload_folder(self, repo_id, folder_path, commit_message, revision, delete_patterns):
        self.uploads.append({"message": commit_message, "revision": revision})
        files = {p: d for p, d in (self.files[self.history[-1]] if self.history else {}).items()
                 if not any(fnmatch.fnmatch(p, pattern) for pattern in delete_patterns)}
        files.update({p.relative_to(folder_path).as_posix(): p.read_bytes() for p in folder_path.rglob("*")
                      if p.is_file()})
        return SimpleNamespace(oid=self.commit(files))

    def create_tag(self, repo_id, tag, revision, tag_message):
        assert tag not in self.tags, "the Hub refuses an existing tag"
        self.tags[tag] = revision

    def delete_tag(self, repo_id, tag):
        self.deleted_tags.append(tag)
        del self.tags[tag]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_module, "validate_card", lambda card, api: None)  # the Hub's check, tested end to end
    stage = tmp_path / "stage1"
    stage.mkdir()
    (stage / "README.md").write_text("---\nlicense: other\n---\n# HIVE\n")
    (stage / "config.json").write_text('{"training_stage": 1}')
    (stage / "model.safetensors").write_bytes(b"weights of stage 1")
    return stage


def push(api, folder):
    return _push_stage(api, REPO, "stage1", folder, None, "Release HIVE stage1")


def test_a_stage_is_committed_and_tagged_once(folder):
    api = FakeApi()
    api.commit({".gitattributes": b"*.safetensors filter=lfs\n"})
    commit = push(api, folder)
    assert api.tags == {"stage1": commit} and api.history[-1] == commit and len(api.uploads) == 1
    assert push(api, folder) == commit  # run again: the tag already holds exactly this folder
    assert len(api.uploads) == 1 and api.deleted_tags == []


@pytest.mark.parametrize("change", ["config.json", "model.safetensors"])
def test_a_changed_file_makes_a_new_commit_and_moves_the_tag(folder, change, caplog):
    api = FakeApi()
    first = push(api, folder)
    (folder / change).write_bytes(b"changed")
    with caplog.at_level(logging.WARNING, logger="hive_hf.release.hub"):
        second = push(api, folder)
    assert second != first and len(api.uploads) == 2
    assert api.tags == {"stage1": second} and api.deleted_tags == ["stage1"]
    assert "moving tag stage1" in caplog.text


def test_a_tag_off_the_target_branch_is_not_taken_as_released(folder):
    api = FakeApi()
    elsewhere = api.commit({p.name: p.read_bytes() for p in folder.iterdir()}, on_branch=False)
    api.tags["stage1"] = elsewhere  # the same files, but released to another branch
    commit = push(api, folder)
    assert commit != elsewhere and len(api.uploads) == 1 and api.tags == {"stage1": commit}


def test_stale_weight_shards_make_a_new_commit_that_removes_them(folder):
    api = FakeApi()
    shard = "model-00002-of-00002.safetensors"
    old = api.commit({**{p.name: p.read_bytes() for p in folder.iterdir()}, shard: b"an earlier release's shard"})
    api.tags["stage1"] = old
    commit = push(api, folder)
    assert commit != old and shard not in api.files[commit]
    assert set(api.files[commit]) == {"README.md", "config.json", "model.safetensors"}


def test_a_tag_already_on_the_commit_is_left_alone():
    api = FakeApi()
    commit = api.commit({"a": b"1"})
    api.tags["stage1"] = commit
    tag_commit(api, REPO, "stage1", commit)
    assert api.tags == {"stage1": commit} and api.deleted_tags == []


def test_a_card_the_hub_would_reject_stops_the_push(folder, monkeypatch):
    def reject(card, api):
        raise ValueError("Invalid YAML metadata")

    monkeypatch.setattr(hub_module, "validate_card", reject)
    api = FakeApi()
    with pytest.raises(ReleaseError, match="fails the Hub's validation"):
        push(api, folder)
    assert api.uploads == [] and api.tags == {}


def test_a_pickle_in_the_folder_stops_the_push(folder):
    (folder / "training_args.bin").write_bytes(b"\x80\x04K\x01.")  # what torch.save / pickle write
    api = FakeApi()
    with pytest.raises(ReleaseError, match=r"Refusing to push pickles to me/hive: \['training_args.bin'\]"):
        push(api, folder)
    assert api.uploads == [] and api.tags == {}
