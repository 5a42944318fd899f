"""The GPU's clock and power draw during a benchmark (nvidia-smi, sampled from a background thread), and
reading such a log back. At large M an H200 holds itself to its 700 W cap: the log shows when."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

# ---- clocks and power ------------------------------------------------------------------------------
POWER_LOG_COLUMNS = ("unix_s", "sm_clock_MHz", "power_W", "temperature_C", "throttle_reasons")
#: nvidia-smi's throttle-reason bit for "software power cap": the card holds itself to its power limit.
POWER_CAP_BIT = 0x4


class PowerLog:
    """While the ``with`` block runs, sample the GPU's SM clock, power draw, temperature and throttle reasons
    (nvidia-smi, about every ``period`` s, from a background thread) into a CSV file with a header line:
    the clocks a benchmark ran at, to line up with its records' ``t_s`` (see notebook 07)."""

    def __init__(self, path, period: float = 0.2, gpu: int = 0):
        self.path, self.period, self.gpu = Path(path), period, gpu
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        query = ["nvidia-smi", f"--id={self.gpu}", "--format=csv,noheader,nounits",
                 "--query-gpu=clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"]
        with self.path.open("w") as f:
            f.write(",".join(POWER_LOG_COLUMNS) + "\n")
            while not self._stop.is_set():
                now = time.time()
                reply = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
                if reply:
                    f.write(f"{now:.3f}," + ",".join(v.strip() for v in reply.split(",")) + "\n")
                    f.flush()
                self._stop.wait(self.period)

    def __enter__(self) -> PowerLog:
        if shutil.which("nvidia-smi") is None:
            raise SystemExit("--power-log needs nvidia-smi")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def read_power_log(path) -> dict[str, list]:
    """A :class:`PowerLog` file as columns: ``unix_s``, ``sm_clock_MHz``, ``power_W``, ``temperature_C``
    (floats) and ``throttle_reasons`` (ints); lines starting with ``#`` are comments."""
    columns = {name: [] for name in POWER_LOG_COLUMNS}
    lines = [line for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not lines or lines[0].split(",") != list(POWER_LOG_COLUMNS):
        raise ValueError(f"{path}: the first line must be the header {','.join(POWER_LOG_COLUMNS)}")
    for number, line in enumerate(lines[1:], start=2):
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(POWER_LOG_COLUMNS):
            raise ValueError(f"{path}: line {number} has {len(values)} fields, expected {len(POWER_LOG_COLUMNS)}")
        try:
            for name, v in zip(POWER_LOG_COLUMNS[:-1], values, strict=False):
                columns[name].append(float(v))
            columns["throttle_reasons"].append(int(values[-1], 16))
        except ValueError:
            raise ValueError(f"{path}: line {number} is not numeric: {line!r}") from None
    return columns


__all__ = ["POWER_LOG_COLUMNS", "POWER_CAP_BIT", "PowerLog", "read_power_log"]
