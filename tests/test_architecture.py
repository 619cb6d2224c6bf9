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


def test_defaults_are_defined_once():
    """The default event types and the scorecard's fields live in one place each; the rest of the code derives them."""
    from features.registry import DEFAULT_EVENT_TYPES

    literal = ", ".join(f'"{t}"' for t in DEFAULT_EVENT_TYPES)
    owners = [
        str(p.relative_to(ROOT))
        for folder in ("features", "model", "training", "serving", "churnguard", "benchmarks", "tests")
        for p in (ROOT / folder).rglob("*.py")
        if not p.is_relative_to(ROOT / "benchmarks" / "out")  # benchmark output: registered models carry our code
        and literal in p.read_text()
    ]
    assert owners == ["features/registry.py"]


def test_readme_documents_every_scorecard_field():
    """The README's field table is for the CRM team: every field of the one scorecard definition is in it."""
    import re

    from model.scorecard import SCORECARD

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| field | meaning |") :].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(\w+)`", table))
    missing = [f.name for f in SCORECARD if f.name not in documented and f.name.removeprefix("p_active_") == f.name]
    assert missing == []
    assert "p_active_30d" in documented
