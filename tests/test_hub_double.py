"""The LocalHub test double (tests/hub_double.py) driven by the real `huggingface_hub` client and `transformers`:
the routes the release tests use behave as the Hub's do.

Uploads go through this process' client (pointed at the double by `install`); downloads run in fresh subprocesses
that only get `HF_ENDPOINT` (+ a fake `HF_TOKEN` and an empty `HF_HOME`) in their environment.
"""

import hashlib
import json
import random
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
from hub_double import LocalHub
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with LocalHub() as hub:
        yield hub.install(monkeypatch, hf_home=tmp_path / "hf_home")
        hub._forget_cached_clients()  # a transformers HfApi built during the test points at this server


def run_python(hub: LocalHub, tmp_path, name: str, code: str, *args, timeout: float = 180) -> str:
    """Run `code` in a fresh interpreter whose only link to the double is its environment; return its stdout."""
    home = tmp_path / f"{name}_hf_home"
    assert not home.exists()
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=hub.env(hf_home=home),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


DOWNLOADER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from huggingface_hub import constants, hf_hub_download

    assert constants.ENDPOINT == os.environ["HF_ENDPOINT"], constants.ENDPOINT
    assert constants.HF_HUB_CACHE.startswith(os.environ["HF_HOME"]), constants.HF_HUB_CACHE
    out = []
    for repo_id, filename, revision in json.loads(sys.argv[1]):
        path = hf_hub_download(repo_id, filename, revision=revision)
        assert path.startswith(os.environ["HF_HOME"]), path
        with open(path, "rb") as f:
            out.append(hashlib.sha256(f.read()).hexdigest())
    print(json.dumps(out))
    """
)


def download_digests(hub, tmp_path, name, requests):
    return json.loads(run_python(hub, tmp_path, name, DOWNLOADER, json.dumps(requests)).strip().splitlines()[-1])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_whoami_create_repo_and_private_flag(hub):
    api = HfApi()
    assert api.whoami()["name"] == "user"
    url = api.create_repo("user/first")
    assert (url.repo_id, url.endpoint, str(url)) == ("user/first", hub.endpoint, f"{hub.endpoint}/user/first")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("user/first")
    assert err.value.response.status_code == 409
    assert api.create_repo("user/first", exist_ok=True).repo_id == "user/first"
    assert api.create_repo("first-in-my-namespace").repo_id == "user/first-in-my-namespace"

    api.create_repo("user/secret", private=True)
    assert api.model_info("user/secret").private is True
    assert api.model_info("user/first").private is False
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("user/secret")  # private repos are invisible without a token
    assert api.repo_exists("user/first") and not api.repo_exists("user/nope")
    # the Hub creates every repo with a first commit holding `.gitattributes`
    assert api.list_repo_files("user/first") == [".gitattributes"]


def test_upload_folder_then_download_in_fresh_process(hub, tmp_path):
    folder = tmp_path / "release"
    (folder / "nested").mkdir(parents=True)
    text, blob = b"small text file\n", random.Random(0).randbytes(300_000)
    (folder / "notes.txt").write_bytes(text)
    (folder / "weights.bin").write_bytes(blob)
    (folder / "nested" / "config.json").write_text('{"a": 1}')

    api = HfApi()
    api.create_repo("user/data")
    info = api.upload_folder(repo_id="user/data", folder_path=folder, commit_message="first release")
    assert len(info.oid) == 40 and int(info.oid, 16) >= 0
    assert info.commit_url == f"{hub.endpoint}/user/data/commit/{info.oid}"
    assert api.model_info("user/data").sha == info.oid
    assert api.list_repo_files("user/data") == [".gitattributes", "nested/config.json", "notes.txt", "weights.bin"]
    assert [c.title for c in api.list_repo_commits("user/data")] == ["first release", "initial commit"]
    metadata = get_hf_file_metadata(hf_hub_url("user/data", "weights.bin"))
    assert (metadata.commit_hash, metadata.size) == (info.oid, len(blob))

    digests = download_digests(hub, tmp_path, "download", [
        ["user/data", "notes.txt", None], ["user/data", "weights.bin", None], ["user/data", "nested/config.json", None]
    ])
    assert digests == [sha256(text), sha256(blob), sha256(b'{"a": 1}')]
    # re-uploading identical content is a no-op commit on the client side (preupload returned the remote oids)
    assert api.upload_folder(repo_id="user/data", folder_path=folder).oid == info.oid
    assert hub.unhandled == []


def test_tags_keep_old_content(hub, tmp_path):
    api = HfApi()
    api.create_repo("user/versions")
    v1 = api.upload_file(repo_id="user/versions", path_or_fileobj=b"version 1", path_in_repo="model.txt").oid
    api.create_tag("user/versions", tag="v1", tag_message="first")
    v2 = api.upload_file(repo_id="user/versions", path_or_fileobj=b"version 2", path_in_repo="model.txt").oid
    assert v1 != v2

    refs = api.list_repo_refs("user/versions")
    assert {b.name: b.target_commit for b in refs.branches} == {"main": v2}
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": v1}
    assert api.model_info("user/versions", revision="v1").sha == v1
    assert api.model_info("user/versions", revision=v1[:10]).sha == v1
    assert api.revision_exists("user/versions", "v1") and not api.revision_exists("user/versions", "v9")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag("user/versions", tag="v1")
    assert err.value.response.status_code == 409
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("user/versions", "model.txt", revision="v9")

    digests = download_digests(hub, tmp_path, "revisions", [
        ["user/versions", "model.txt", "v1"], ["user/versions", "model.txt", "main"], ["user/versions", "model.txt", v1],
    ])
    assert digests == [sha256(b"version 1"), sha256(b"version 2"), sha256(b"version 1")]


def test_missing_file_repo_and_optional_transformers_files(hub):
    api = HfApi()
    api.create_repo("user/sparse")
    api.upload_file(repo_id="user/sparse", path_or_fileobj=b"{}", path_in_repo="config.json")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/sparse", "missing.bin")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/does-not-exist", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/does-not-exist")
    assert api.file_exists("user/sparse", "config.json") and not api.file_exists("user/sparse", "missing.bin")

    from transformers.utils import cached_file

    # transformers probes optional files and must see "does not exist", not an error
    for optional in ("generation_config.json", "processor_config.json", "chat_template.jinja",
                     "custom_generate/generate.py"):
        assert cached_file("user/sparse", optional, _raise_exceptions_for_missing_entries=False) is None
    assert cached_file("user/sparse", "config.json").endswith("config.json")


def test_writes_without_a_token_fail_with_client_errors(hub, monkeypatch):
    hub.create_repo("user/locked")
    monkeypatch.delenv("HF_TOKEN")
    api = HfApi()
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("user/new")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(repo_id="user/locked", path_or_fileobj=b"x", path_in_repo="x.txt")
    assert err.value.response.status_code == 401
    with pytest.raises(LocalTokenNotFoundError):
        api.whoami()
    assert hub.list_files("user/locked") == [".gitattributes"]
    # reads of public repos need no token
    assert api.list_repo_files("user/locked") == [".gitattributes"]


LLAMA_LOADER = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import AutoModelForCausalLM

    repo_id, data_file = sys.argv[1:3]
    data = torch.load(data_file)
    model = AutoModelForCausalLM.from_pretrained(repo_id).eval()
    with torch.no_grad():
        logits = model(data["input_ids"]).logits
    torch.testing.assert_close(logits, data["logits"])
    print("loaded", type(model).__name__)
    """
)


def test_transformers_push_to_hub_then_from_pretrained_in_fresh_process(hub, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=50)
    model = LlamaForCausalLM(config).eval()
    input_ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        logits = model(input_ids).logits
    commit = model.push_to_hub("user/tiny")
    assert HfApi().model_info("user/tiny").sha == commit.oid
    files = hub.list_files("user/tiny")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files), files

    torch.save({"input_ids": input_ids, "logits": logits}, tmp_path / "expected.pt")
    out = run_python(hub, tmp_path, "llama", LLAMA_LOADER, "user/tiny", tmp_path / "expected.pt")
    assert "loaded LlamaForCausalLM" in out
    assert hub.unhandled == []


def test_server_binds_loopback_and_stops_cleanly(tmp_path):
    before = constants.ENDPOINT
    with LocalHub() as hub:
        assert hub.endpoint.startswith("http://127.0.0.1:") and hub.running
        port = int(hub.endpoint.rsplit(":", 1)[1])
        with hub.patch_client(hf_home=tmp_path / "home"):
            assert constants.ENDPOINT == hub.endpoint
            assert constants.HF_HUB_CACHE == str(tmp_path / "home" / "hub")
            HfApi().create_repo("user/alive")  # leaves a keep-alive connection open in the client's pool
        assert constants.ENDPOINT == before
        assert HfApi(endpoint=hub.endpoint, token=hub.token).whoami()["name"] == "user"
        HfApi(endpoint=hub.endpoint).list_repo_refs("user/alive")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{hub.endpoint}/api/no-such-thing", timeout=10)
        assert err.value.code == 404
        assert hub.unhandled == [("GET", "/api/no-such-thing")]
    assert not hub.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
