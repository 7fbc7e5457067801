"""Where a study's Optuna trials live: a journal file in the study folder, or a team's database.

The default is Optuna's JournalStorage on a file (`optuna.journal` in the study folder): the study
has one writer (the driver), an append-only log is valid at every moment (a copy taken mid-study,
or uploaded to a bucket, is a consistent prefix; SQLite's file is not safe to copy while written),
and optuna-dashboard reads it as it grows (`optuna-dashboard runs/demo/optuna.journal`).
`search.storage: postgresql://...` (any SQLAlchemy URL) puts it in a shared database instead.
"""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

JOURNAL = "optuna.journal"


def storage_location(configured: str | None, folder: str | Path) -> str:
    """The study's storage: the configured database URL, else the journal file in `folder`."""
    return configured or str(Path(folder) / JOURNAL)


def open_storage(location: str, writer: bool = False) -> BaseStorage:
    """An Optuna storage for a database URL (`scheme://...`) or a journal file path.

    The writer (the study's driver) first removes a lock file that a killed driver left behind:
    Optuna would otherwise wait 30 s for it at the first write. Readers take no lock."""
    if "://" in location:
        return RDBStorage(location)
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileOpenLock(str(path))
    if writer:
        Path(f"{path}.lock").unlink(missing_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def load_trials_study(folder: str | Path, configured: str | None = None) -> optuna.Study:
    """The Optuna study of the study folder `folder` (named as the folder), for reading: reports,
    warm starts, tests. `configured` is the study's `search.storage` when it has one."""
    location = storage_location(configured, folder)
    if "://" not in location and not Path(location).is_file():
        raise FileNotFoundError(f"{location}: no Optuna journal in this study folder")
    return optuna.load_study(study_name=Path(folder).name, storage=open_storage(location))
