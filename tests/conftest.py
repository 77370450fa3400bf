"""Shared test setup: offline model hubs, ``tests/`` on sys.path, the shared real-data folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# No test may reach a model hub: set before anything imports transformers/huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# `from synthetic import make_featureset` works from any test module.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``: real recordings and label files kept outside the repository."""
    path = (REPO_ROOT.parent / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip("../shared/data not found: real-data tests need the shared data folder beside the repo")
    return path
