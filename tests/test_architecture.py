"""The layers are a contract: features < model < training | serving < churnguard (pyproject.toml, import-linter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_are_kept():
    """A wrong import (serving -> training, features -> churnguard, ...) fails here with the chain that breaks it."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_service_process_never_imports_the_training_job():
    """Importing the API must not load training code (fitting, evaluation, plots: lifelines, matplotlib).

    Only ``training.settings``, the section the composed settings declare, may be imported (by the service's
    settings edge); it is a pydantic model and nothing else.
    """
    code = (
        "import sys; import serving.service, serving.scoring, model.registry; "
        "bad = sorted(m for m in sys.modules if m.startswith(('training.', 'lifelines', 'matplotlib')) "
        "and m != 'training.settings'); print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"loaded by the service: {out.stdout.strip()}"
