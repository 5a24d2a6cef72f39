"""The peers' virtual environment (`bench/.peers/`): celery, RedBeat, APScheduler, croniter,
cronsim, matplotlib and py-spy.

None of these is a dependency of beatd. The bench installs them here itself, on first use and
whenever the lock changes, exactly as `requirements/peers.lock` pins them (hashes checked; refresh
it with `./scripts/lock`), and runs the peer drivers (`bench/drivers/*.py`), the cron comparison
and the plotting with this environment's Python.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peers"
PYTHON = VENV / "bin" / "python"
LOCK = HERE.parent / "requirements" / "peers.lock"
DISTRIBUTIONS = (
    "celery",
    "kombu",
    "billiard",
    "celery-redbeat",
    "APScheduler",
    "redis",
    "croniter",
    "cronsim",
    "matplotlib",
)
STAMP = VENV / "lock.sha256"


def ensure_venv(log=print) -> Path:
    """Create the peers' venv from the lock; a no-op when the stamp says it holds this lock.

    A venv made from another lock is recreated, not updated, since pip only adds packages.
    """
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return PYTHON
    log(f"creating {VENV} from {LOCK.name}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [
            str(PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--no-deps",
            "-r",
            str(LOCK),
        ],
        check=True,
    )
    STAMP.write_text(digest + "\n")
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
