"""The Rasa project as a whole: training data validates and every test story passes."""
from __future__ import annotations

import subprocess

import pytest

from tests.servers import MODEL, RASA, ROOT

pytestmark = pytest.mark.model


def run_rasa(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([RASA, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_training_data_validates():
    result = run_rasa("data", "validate")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert " ERROR " not in output and "No story structure conflicts found" in output


def test_every_test_story_passes(tmp_path):
    if not MODEL.exists():
        pytest.fail("models/cardcare.tar.gz is missing: run `make train` (make test does it for you)")
    result = run_rasa("test", "core", "-m", str(MODEL), "--stories", "tests/test_stories.yml",
                      "--fail-on-prediction-errors", "--out", str(tmp_path))
    output = result.stdout + result.stderr
    failed = (tmp_path / "failed_test_stories.yml").read_text() if (tmp_path / "failed_test_stories.yml").exists() else ""
    assert result.returncode == 0, output[-4000:] + failed
    assert "None of the test stories failed" in failed
