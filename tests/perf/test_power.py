"""moe_lib.perf.power: a power log reads back as columns; a bad file is refused with the line named."""

from __future__ import annotations

import pytest

from moe_lib.perf.power import read_power_log


def test_power_log_round_trip(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("# a comment\nunix_s,sm_clock_MHz,power_W,temperature_C,throttle_reasons\n"
                    "12.5,1980,120.5,40,0x0000000000000000\n13.0, 1500, 699.9, 55, 0x0000000000000004\n")
    log = read_power_log(path)
    assert log == {"unix_s": [12.5, 13.0], "sm_clock_MHz": [1980.0, 1500.0], "power_W": [120.5, 699.9],
                   "temperature_C": [40.0, 55.0], "throttle_reasons": [0, 4]}
    path.write_text("12.5,1980,120.5,40,0x0\n")
    with pytest.raises(ValueError, match="header"):
        read_power_log(path)
    path.write_text("unix_s,sm_clock_MHz,power_W,temperature_C,throttle_reasons\n12.5,[N/A],120.5,40,0x0\n")
    with pytest.raises(ValueError, match="line 2"):
        read_power_log(path)
