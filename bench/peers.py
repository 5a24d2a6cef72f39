"""The peers' virtual environment (`bench/.peers/`): celery, RedBeat, APScheduler, matplotlib.

None of these is a dependency of beatd. The bench installs them here itself, once, with pip, and
runs the peer drivers (`bench/drivers/*.py`) and the plotting with this environment's Python.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peers"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = (
    "celery[redis]>=5.3",
    "celery-redbeat>=2.2",
    "apscheduler>=3.10,<4",
    "matplotlib>=3.8",
    "py-spy>=0.3",
)
DISTRIBUTIONS = (
    "celery",
    "kombu",
    "billiard",
    "celery-redbeat",
    "APScheduler",
    "redis",
    "matplotlib",
)
STAMP = VENV / "requirements.json"


def ensure_venv(log=print) -> Path:
    """Create or update the peers' venv; a no-op when the stamp says it is current."""
    if STAMP.exists() and json.loads(STAMP.read_text()) == list(REQUIREMENTS):
        return PYTHON
    if not PYTHON.exists():
        log(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    log("installing peers: " + " ".join(REQUIREMENTS))
    subprocess.run(
        [
            str(PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *REQUIREMENTS,
        ],
        check=True,
    )
    STAMP.write_text(json.dumps(list(REQUIREMENTS)))
    return PYTHON


def versions() -> dict[str, str]:
    """Installed versions of the peers, from the venv's own metadata."""
    code = (
        "import json, importlib.metadata as m\n"
        f"names = {list(DISTRIBUTIONS)!r}\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([str(PYTHON), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(result.stdout)


def py_spy() -> Path:
    return VENV / "bin" / "py-spy"


def celery() -> Path:
    """The `celery` command of the peers' Celery (scenario 5 starts a worker with it)."""
    return VENV / "bin" / "celery"
