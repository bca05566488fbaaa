"""`Experiment`: one versioned run folder, `<save_dir>/<name>/version_<N>/`.

It holds `hparams.json` (hyperparameters), `metrics.csv` (one row per logged step, flushed as
written so it can be read while training runs), `checkpoints/`, and TensorBoard event files when
the `tensorboard` package is installed.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from .checkpoint.storage import temporary_name
from .errors import ConfigurationError

__all__ = ["Experiment"]

_VERSION_DIR = re.compile(r"^version_(\d+)$")


class Experiment:
    """A versioned run folder, in the manner of test_tube's `Experiment`.

    `version=None` takes the next free number (claimed with an atomic `mkdir`, so two runs
    started at once never share a folder); an existing version reopens its folder, and a
    `Trainer` given it resumes from that version's newest checkpoint.
    """

    def __init__(self, save_dir: str | os.PathLike[str] = "runs", name: str = "default",
                 version: int | None = None) -> None:
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ConfigurationError(f"Experiment name must be a plain folder name, got {name!r}")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
            raise ConfigurationError(f"Experiment version must be an int >= 0 or None, got {version!r}")
        self.save_dir = Path(save_dir)
        self.name = name
        self.version = self._claim(version)
        self.hparams: dict[str, Any] = _read_json(self.path / "hparams.json")
        self._columns: list[str] = []
        self._rows = 0
        self._load_metrics_header()
        self._tensorboard: Any = None
        self._metrics_file: Any = None

    # --- the folder --------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The run folder: `<save_dir>/<name>/version_<N>`."""
        return self.save_dir / self.name / f"version_{self.version}"

    log_dir = path

    @property
    def checkpoint_dir(self) -> Path:
        """Where this run's checkpoints go: `<path>/checkpoints`."""
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        """The run's `metrics.csv`."""
        return self.path / "metrics.csv"

    def _claim(self, version: int | None) -> int:
        root = self.save_dir / self.name
        try:
            root.mkdir(parents=True, exist_ok=True)
            if version is not None:
                (root / f"version_{version}").mkdir(exist_ok=True)
                _check_writable(root / f"version_{version}")
                return version
            while True:
                version = 1 + max((int(m.group(1)) for m in map(_VERSION_DIR.match, os.listdir(root)) if m),
                                  default=-1)
                try:
                    (root / f"version_{version}").mkdir()
                    return version
                except FileExistsError:  # another run claimed it between listdir and mkdir
                    continue
        except OSError as err:
            raise ConfigurationError(
                f"cannot create the run folder under {root}: {err.strerror or err}. "
                "Pass Experiment(save_dir=...) (or Trainer(default_root_dir=...)) a folder you can write"
            ) from err

    # --- hyperparameters ---------------------------------------------------------------------
    def tag(self, hparams: Mapping[str, Any]) -> None:
        """Record hyperparameters (merged into `hparams.json`), as test_tube's `exp.tag`."""
        self.hparams.update(to_plain(dict(hparams)))
        _write_text_atomic(self.path / "hparams.json", json.dumps(self.hparams, indent=2, sort_keys=True) + "\n")

    # --- metrics -----------------------------------------------------------------------------
    @property
    def metric_rows(self) -> int:
        """Rows written to `metrics.csv` so far (a checkpoint records it; resume truncates to it)."""
        return self._rows

    def log(self, metrics: Mapping[str, Any], step: int | None = None, epoch: int | None = None) -> None:
        """Append one row to `metrics.csv` (and TensorBoard when installed).

        `step` defaults to the row number. Values must be numbers; a new metric name adds a column
        (the file is rewritten once with the wider header).
        """
        row: dict[str, Any] = {"step": self._rows if step is None else int(step)}
        if epoch is not None:
            row["epoch"] = int(epoch)
        for key, value in metrics.items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                raise ConfigurationError(f"metric {key!r} must be a number, got {type(value).__name__}") from None
        new = [k for k in row if k not in self._columns]
        if new:
            self._columns += new
            self._rewrite_metrics(self.read_metrics())
        if self._metrics_file is None:  # kept open between rows: opening costs more than the row
            self._metrics_file = open(self.metrics_path, "a", newline="")
        csv.DictWriter(self._metrics_file, self._columns).writerow({k: _fmt(v) for k, v in row.items()})
        self._metrics_file.flush()  # readable while training runs, and kept if the process is killed
        self._rows += 1
        self._log_tensorboard(row)

    def read_metrics(self) -> list[dict[str, str]]:
        """All rows of `metrics.csv` as dicts of strings (empty values for missing columns)."""
        if not self.metrics_path.exists():
            return []
        with open(self.metrics_path, newline="") as f:
            return list(csv.DictReader(f))

    def truncate_metrics(self, rows: int) -> None:
        """Keep the first `rows` rows: drops rows logged after the checkpoint a run resumes from."""
        kept = self.read_metrics()[:rows]
        self._rewrite_metrics(kept)
        self._rows = len(kept)

    def _rewrite_metrics(self, rows: list[dict[str, str]]) -> None:
        self._close_metrics_file()  # the file is replaced: appends must go to the new one
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self._columns, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k in self._columns} for row in rows)
        _write_text_atomic(self.metrics_path, buf.getvalue())

    def _load_metrics_header(self) -> None:
        rows = self.read_metrics()
        if self.metrics_path.exists():
            with open(self.metrics_path, newline="") as f:
                self._columns = next(csv.reader(f), [])
        self._rows = len(rows)

    def _log_tensorboard(self, row: dict[str, Any]) -> None:
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._tensorboard = False
                return
            self._tensorboard = SummaryWriter(str(self.path))
        if self._tensorboard:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self._tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        """Close `metrics.csv` and the TensorBoard writer, if open (a later `log` reopens them)."""
        self._close_metrics_file()
        if self._tensorboard:
            self._tensorboard.close()
        self._tensorboard = None

    def _close_metrics_file(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def __repr__(self) -> str:
        return f"Experiment(save_dir={str(self.save_dir)!r}, name={self.name!r}, version={self.version})"


def to_plain(value: Any) -> Any:
    """Hyperparameters as JSON-ready data: dataclasses → dicts, Paths → str, enums → value, tuples → lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value) if isinstance(value, float) else str(value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ConfigurationError(f"cannot read {path}: {err}; fix or delete the file") from err


def _check_writable(folder: Path) -> None:
    probe = folder / f".write-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def _write_text_atomic(path: Path, text: str) -> None:
    # Renamed into place, so a killed process never leaves half a file; named as the storage
    # layer's temporaries, so leftovers are cleaned at fit start. Not fsynced (unlike
    # checkpoints): these small files are rewritten often, and a sync costs up to tens of ms here.
    temporary = path.with_name(temporary_name(path.name))
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
