"""model_ref forms: file:, catalog names, and hf: against a cache laid out as huggingface_hub lays
it out (checked by the library's own `scan_cache_dir`, so the layout is the library's, not ours)."""

from __future__ import annotations

import hashlib
import os

import pytest
from huggingface_hub import scan_cache_dir

from pool_managerd.errors import PoolError
from pool_managerd.model_refs import parse_hf, resolve_model_ref
from runtime.default_model import default_model_path
from runtime.models.catalog import CATALOG
from tests.reference_data import catalog_model_file

REVISION = "0123456789abcdef0123456789abcdef01234567"


def hf_cache(root, repo_id: str, filename: str, content: bytes, *, revision: str = REVISION):
    """A cache folder as huggingface_hub writes it: blobs by hash, a snapshot of symlinks,
    refs/main naming the snapshot."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    link = repo / "snapshots" / revision / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return link


def refused(ref, code: str, **kwargs) -> PoolError:
    with pytest.raises(PoolError) as caught:
        resolve_model_ref(ref, **kwargs)
    assert caught.value.code == code and caught.value.field == "model_ref", caught.value.to_body()
    return caught.value


def test_file_refs(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_model_ref(f"file:{model}") == model
    assert resolve_model_ref(f"file://{model}") == model
    refused("file:m.gguf", "INVALID_REQUEST")
    refused("file:", "INVALID_REQUEST")
    error = refused(f"file:{tmp_path}/absent.gguf", "NOT_FOUND")
    assert error.to_body()["error"]["details"]["path"] == f"{tmp_path}/absent.gguf"
    refused(f"file:{tmp_path}", "NOT_FOUND")  # a folder is not a model file


def test_catalog_names():
    assert resolve_model_ref("smollm2-135m") == default_model_path()
    error = refused("qwen9-unknown", "NOT_FOUND")
    assert "qwen9-unknown" in error.message


@pytest.mark.parametrize("name", sorted(n for n, e in CATALOG.items() if not e.embedded))
def test_every_name_the_workers_pull_knows(name, tmp_path, monkeypatch):
    """The pool resolves catalog names through the worker's own catalog: not pulled into the
    models folder -> NOT_FOUND naming the `pull` command; pulled -> the file `pull` wrote."""
    monkeypatch.setenv("WORKER_ORCD_MODELS_DIR", str(tmp_path))  # an empty models folder
    error = refused(name, "NOT_FOUND")
    assert f"worker-orcd pull {name}" in error.message
    monkeypatch.undo()
    assert resolve_model_ref(name) == catalog_model_file(name)


@pytest.mark.parametrize("ref", ["", 7, None, "UPPER case", "x" * 2000, "smollm2\n", "s3:b/k"])
def test_malformed_refs(ref):
    refused(ref, "INVALID_REQUEST")


def test_hf_refs_resolve_from_the_librarys_cache_layout(tmp_path):
    content = b"GGUF" + os.urandom(1000)
    link = hf_cache(tmp_path, "acme/tiny-GGUF", "tiny-q4.gguf", content)
    nested = hf_cache(tmp_path, "acme/tiny-GGUF", "q8/tiny-q8.gguf", b"GGUF" + os.urandom(10))
    info = scan_cache_dir(tmp_path)  # the library agrees this is its cache
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == "acme/tiny-GGUF" and repo.repo_type == "model"
    (revision,) = repo.revisions
    assert revision.commit_hash == REVISION and "main" in revision.refs
    assert {f.file_name for f in revision.files} == {"tiny-q4.gguf", "tiny-q8.gguf"}

    found = resolve_model_ref("hf:acme/tiny-GGUF/tiny-q4.gguf", hf_cache=tmp_path)
    assert found == link and found.read_bytes() == content
    assert resolve_model_ref("hf:acme/tiny-GGUF/q8/tiny-q8.gguf", hf_cache=tmp_path) == nested

    error = refused("hf:acme/tiny-GGUF/other.gguf", "NOT_FOUND", hf_cache=tmp_path)
    assert "--hf-download" in error.message and str(tmp_path) in error.message
    refused("hf:acme/absent/x.gguf", "NOT_FOUND", hf_cache=tmp_path)


@pytest.mark.parametrize(
    "ref", ["hf:acme/x.gguf", "hf:acme/repo/file.bin", "hf:acme/../x.gguf", "hf:a b/c/d.gguf"]
)
def test_malformed_hf_refs(ref):
    refused(ref, "INVALID_REQUEST")


def test_parse_hf():
    assert parse_hf("hf:org/repo/dir/f.gguf") == ("org/repo", "dir/f.gguf")
