"""--max-vram-bytes: parsed, validated, and handed to the cuda engine loader only."""

import pytest

from actors.loader import engine_options
from runtime.cli import build_parser, config_from_args
from runtime.config import WorkerConfig


def test_flag_reaches_the_config():
    args = build_parser().parse_args(["--max-vram-bytes", "123456789"])
    assert config_from_args(args).max_vram_bytes == 123456789
    assert config_from_args(build_parser().parse_args([])).max_vram_bytes is None


def test_environment_reaches_the_config():
    assert WorkerConfig.from_env({"WORKER_ORCD_MAX_VRAM_BYTES": "4096"}).max_vram_bytes == 4096


@pytest.mark.parametrize("bad", ["0", "-5"])
def test_non_positive_cap_is_refused(bad):
    with pytest.raises(ValueError, match="max_vram_bytes"):
        WorkerConfig.from_mapping({"max_vram_bytes": bad})


def test_loader_forwards_the_cap_only_to_cuda():
    capped = WorkerConfig(max_vram_bytes=1 << 30)
    batch = {"max_batch": capped.max_batch}  # every backend takes its slot count
    assert engine_options(capped, "cuda") == {"max_vram_bytes": 1 << 30, **batch}
    assert engine_options(capped, "cpu") == batch  # the cpu engine refuses other options
    assert engine_options(WorkerConfig(max_batch=3), "cuda") == {"max_batch": 3}
