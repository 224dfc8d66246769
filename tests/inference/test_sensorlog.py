"""Sensor-log reader: round trips (CSV, Parquet; numeric and ISO times; blanks) and every rejection with its message."""

import datetime as dt
import re
import sys

import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twinjax.inference._base import prepare_inputs
from twinjax.inference.sensorlog import SensorLog, read_sensor_log, write_sensor_log

from ..helpers import assert_tree_allclose


def _log(rng, T=12, with_controls=True):
    ts = np.cumsum(rng.uniform(0.01, 0.5, T)) - 0.2  # irregular, starting away from 0
    ys = rng.normal(size=(T, 3))
    ys[rng.uniform(size=ys.shape) < 0.25] = np.nan
    ys[3] = np.nan  # a fully missing row
    us = rng.normal(size=(T, 2)) if with_controls else None
    controls = ["torque_Nm", "valve"] if with_controls else None
    return SensorLog(ts, ys, channels=["angle", "rate", "temp"], us=us, controls=controls)


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", ["csv", "parquet", "tsv", "csv.gz"])
@pytest.mark.parametrize("controls", [True, False])
def test_round_trip_numeric_times(tmp_path, suffix, controls):
    log = _log(np.random.default_rng(1), with_controls=controls)
    path = write_sensor_log(tmp_path / f"log.{suffix}", log)
    back = read_sensor_log(path, channels=log.channels, controls=log.controls or None)
    # 17 significant digits: exact
    np.testing.assert_array_equal(back.ts, log.ts)
    np.testing.assert_array_equal(back.ys, log.ys)  # NaN where NaN
    np.testing.assert_array_equal(back.mask, ~np.isnan(log.ys))
    assert back.channels == log.channels and back.controls == log.controls
    if controls:
        np.testing.assert_array_equal(back.us, log.us)
    else:
        assert back.us is None
    assert back.time_origin is None


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
@pytest.mark.parametrize("start", ["2024-05-01T12:00:00Z", "2024-05-01T23:59:59.5+02:00", "2024-05-01 12:00:00"])
def test_round_trip_iso_times(tmp_path, suffix, start):
    log = _log(np.random.default_rng(2))
    shifted = SensorLog(
        log.ts - log.ts[0], log.ys, channels=log.channels, us=log.us, controls=log.controls
    )  # ISO times are seconds since the first
    path = write_sensor_log(tmp_path / f"log.{suffix}", shifted, start=start)
    back = read_sensor_log(path, controls=list(log.controls))
    # ISO timestamps have microsecond resolution
    np.testing.assert_allclose(back.ts, shifted.ts, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(back.ys, log.ys)
    np.testing.assert_array_equal(back.us, log.us)
    origin = dt.datetime.fromisoformat(start)
    assert dt.datetime.fromisoformat(back.time_origin) == origin
    # an explicit origin one minute earlier shifts every time by 60 s
    earlier = (origin - dt.timedelta(minutes=1)).isoformat()
    back2 = read_sensor_log(path, controls=list(log.controls), t0=earlier)
    np.testing.assert_allclose(back2.ts, shifted.ts + 60.0, rtol=0, atol=1e-6)


def test_handwritten_csv_missing_tokens_units_and_selection(tmp_path):
    text = (
        "time_ms, angle ,rate,extra,torque\n"
        "1000,0.5,,7,0.0\n"
        "\n"  # blank lines are skipped
        "1250,NaN,1.5,7,0.1\n"
        "1300, NA ,n/a,7,0.2\n"
        "2000,null,-2e-3,7,0.3\n"
        "2500,1_0,None,7,0.4\n"
    )
    path = _write(tmp_path / "plant.csv", text)
    log = read_sensor_log(
        path, channels=["rate", "angle"], controls=["torque"], time_column="time_ms", time_unit="ms", t0=1000
    )
    np.testing.assert_allclose(log.ts, [0.0, 0.25, 0.3, 1.0, 1.5], rtol=0, atol=1e-15)
    nan = np.nan
    np.testing.assert_array_equal(log.ys, [[nan, 0.5], [1.5, nan], [nan, nan], [-2e-3, nan], [nan, 10.0]])
    np.testing.assert_array_equal(log.mask, ~np.isnan(log.ys))
    np.testing.assert_array_equal(log.us[:, 0], [0.0, 0.1, 0.2, 0.3, 0.4])
    assert log.channels == ("rate", "angle")  # the model's order, not the file's
    # default channels: every column but time and controls, in file order
    assert read_sensor_log(path, time_column="time_ms", controls=["torque"]).channels == ("angle", "rate", "extra")


def test_iso_offsets_are_compared_as_instants(tmp_path):
    text = "time,y\n2024-01-01T10:00:00+02:00,1\n2024-01-01T08:00:01Z,2\n2024-01-01T09:00:02.5+01:00,3\n"
    log = read_sensor_log(_write(tmp_path / "tz.csv", text))
    np.testing.assert_allclose(log.ts, [0.0, 1.0, 2.5], rtol=0, atol=0)


def test_parquet_string_iso_and_integer_times(tmp_path):
    table = pa.table(
        {
            "stamp": ["2024-03-01T00:00:00", "2024-03-01T00:00:00.5", "2024-03-01T00:00:02"],
            "y": pa.array([1.0, None, 3.0]),
            "n": pa.array([1, 2, None], type=pa.int32()),
        }
    )
    pq.write_table(table, tmp_path / "s.parquet")
    log = read_sensor_log(tmp_path / "s.parquet", time_column="stamp")
    np.testing.assert_array_equal(log.ts, [0.0, 0.5, 2.0])
    np.testing.assert_array_equal(log.ys, [[1.0, 1.0], [np.nan, 2.0], [3.0, np.nan]])
    pq.write_table(pa.table({"t": pa.array([5, 7, 20], type=pa.int64()), "y": [1.0, 2.0, 3.0]}), tmp_path / "i.pq")
    log = read_sensor_log(tmp_path / "i.pq", time_column="t", time_unit="min")
    np.testing.assert_array_equal(log.ts, [300.0, 420.0, 1200.0])


def test_to_arrays_feed_a_filter(tmp_path):
    log = _log(np.random.default_rng(3))
    ts, ys, us = log.to_arrays()
    assert ts.shape == (12,) and ys.shape == (12, 3) and us.shape == (12, 2)
    assert all(isinstance(a, jnp.ndarray) for a in (ts, ys, us))
    assert len(log) == 12 and log.obs_dim == 3 and log.control_dim == 2

    class _M:  # prepare_inputs only reads these
        dt = None
        control_dim = 2

    ys2, us2, ts2 = prepare_inputs(_M(), ys, us, ts)
    assert_tree_allclose((ys2, us2, ts2), (ys, us, ts))


# ---------------------------------------------------------------------------------------------------------------------
# rejections


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_unsorted_times_name_rows_and_times(tmp_path, suffix):
    log = SensorLog([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], channels=["y"])
    path = write_sensor_log(tmp_path / f"a.{suffix}", log)
    if suffix == "csv":
        path.write_text("time,y\n0,1\n1,2\n0.5,3\n3,4\n")
        msg = "row 2 (line 4) at t = 0.5 s comes after row 1 (line 3) at t = 1 s"
    else:
        pq.write_table(pa.table({"time": [0.0, 1.0, 0.5, 3.0], "y": [1.0, 2.0, 3.0, 4.0]}), path)
        msg = "row 2 at t = 0.5 s comes after row 1 at t = 1 s"
    with pytest.raises(ValueError, match="not sorted") as err:
        read_sensor_log(path)
    assert msg in str(err.value)


def test_duplicate_times_name_rows(tmp_path):
    path = _write(tmp_path / "d.csv", "time,y\n0,1\n1,2\n1,3\n2,4\n")
    with pytest.raises(
        ValueError, match=re.escape("duplicated timestamps: row 1 (line 3) and row 2 (line 4) both at t = 1 s")
    ):
        read_sensor_log(path)
    iso = _write(tmp_path / "d2.csv", "time,y\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00+01:00,2\n")
    with pytest.raises(ValueError, match="duplicated timestamps: row 0"):  # the same instant in two time zones
        read_sensor_log(iso)


def test_channel_errors(tmp_path):
    path = _write(tmp_path / "c.csv", "time,angle,rate,mystery\n0,1,2,3\n1,1,2,3\n")
    with pytest.raises(
        ValueError,
        match=re.escape("channel ['speed'] not in c.csv; the file's columns are ['time', 'angle', 'rate', 'mystery']"),
    ):
        read_sensor_log(path, channels=["angle", "speed"])
    with pytest.raises(ValueError, match=re.escape("control ['torque'] not in c.csv")):
        read_sensor_log(path, channels=["angle"], controls=["torque"])
    # an unrequested column is ignored by default, rejected with strict=True
    assert read_sensor_log(path, channels=["angle", "rate"]).channels == ("angle", "rate")
    with pytest.raises(ValueError, match=re.escape("unknown channels ['mystery'] in c.csv (strict=True)")):
        read_sensor_log(path, channels=["angle", "rate"], strict=True)
    read_sensor_log(path, channels=["angle", "rate", "mystery"], strict=True)
    with pytest.raises(ValueError, match="`time_column` 'Time' is not a column of c.csv"):
        read_sensor_log(path, time_column="Time")
    with pytest.raises(ValueError, match="`channels` names a column twice"):
        read_sensor_log(path, channels=["angle", "angle"])
    with pytest.raises(ValueError, match="`channels` must be a list of column names"):
        read_sensor_log(path, channels="angle")
    with pytest.raises(ValueError, match="both as `channels` and as `controls`"):
        read_sensor_log(path, channels=["angle"], controls=["angle"])
    with pytest.raises(ValueError, match="includes the time column"):
        read_sensor_log(path, channels=["time"])


def test_unparsable_and_infinite_cells_name_row_and_column(tmp_path):
    path = _write(tmp_path / "u.csv", "time,angle,rate\n0,1,2\n1,1.5,abc\n")
    with pytest.raises(ValueError, match=re.escape("row 1 (line 3), column 'rate': cannot read 'abc' as a number")):
        read_sensor_log(path)
    path = _write(tmp_path / "i.csv", "time,angle\n0,1\n1,inf\n")
    with pytest.raises(ValueError, match=re.escape("row 1 (line 3), column 'angle': infinite value")):
        read_sensor_log(path)
    path = _write(tmp_path / "t.csv", "time,angle\n0,1\n1.5s,2\n")
    with pytest.raises(ValueError, match=re.escape("row 1 (line 3), column 'time': cannot read the timestamp '1.5s'")):
        read_sensor_log(path)
    path = _write(tmp_path / "iso.csv", "time,angle\n2024-01-01T00:00:00,1\n2024-13-01T00:00:00,2\n")
    with pytest.raises(ValueError, match=re.escape("row 1 (line 3), column 'time': cannot read the timestamp")):
        read_sensor_log(path)
    pq.write_table(pa.table({"time": [0.0, 1.0], "y": [1.0, float("inf")]}), tmp_path / "i.parquet")
    with pytest.raises(ValueError, match=re.escape("row 1, column 'y': infinite value inf")):
        read_sensor_log(tmp_path / "i.parquet")
    pq.write_table(pa.table({"time": [0.0, 1.0], "y": ["1.0", "x"]}), tmp_path / "s.parquet")
    with pytest.raises(ValueError, match=re.escape("row 1, column 'y': cannot read 'x' as a number")):
        read_sensor_log(tmp_path / "s.parquet")


def test_blank_control_and_timestamp_are_errors(tmp_path):
    path = _write(tmp_path / "b.csv", "time,y,u\n0,1,0.5\n1,2,\n2,,0.7\n")
    with pytest.raises(ValueError, match=re.escape("control column 'u' of b.csv is blank at row 1 (line 3)")):
        read_sensor_log(path, controls=["u"])
    np.testing.assert_array_equal(read_sensor_log(path, channels=["y", "u"]).mask, [[1, 1], [1, 0], [0, 1]])
    path = _write(tmp_path / "bt.csv", "time,y\n0,1\n,2\n")
    with pytest.raises(ValueError, match=re.escape("row 1 (line 3): the timestamp in column 'time' is blank")):
        read_sensor_log(path)
    pq.write_table(pa.table({"time": pa.array([0.0, None]), "y": [1.0, 2.0]}), tmp_path / "bt.parquet")
    with pytest.raises(ValueError, match=re.escape("row 1: the timestamp in column 'time' is blank")):
        read_sensor_log(tmp_path / "bt.parquet")


def test_malformed_files(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        read_sensor_log(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="cannot tell the format of 'x.json'"):
        read_sensor_log(_write(tmp_path / "x.json", "{}"))
    with pytest.raises(ValueError, match="x.csv is empty"):
        read_sensor_log(_write(tmp_path / "x.csv", "\n"))
    with pytest.raises(ValueError, match="header but no data rows"):
        read_sensor_log(_write(tmp_path / "h.csv", "time,y\n"))
    with pytest.raises(ValueError, match=re.escape("r.csv line 3 has 2 cells but the header has 3 columns")):
        read_sensor_log(_write(tmp_path / "r.csv", "time,y,z\n0,1,2\n1,2\n"))
    with pytest.raises(ValueError, match=re.escape("duplicated column names ['y']")):
        read_sensor_log(_write(tmp_path / "dup.csv", "time,y,y\n0,1,2\n"))
    good = _write(tmp_path / "g.csv", "time,y\n0,1\n")
    with pytest.raises(ValueError, match="`time_unit` must be one of"):
        read_sensor_log(good, time_unit="fortnight")
    with pytest.raises(ValueError, match="`format` must be 'csv' or 'parquet'"):
        read_sensor_log(good, format="xlsx")
    with pytest.raises(ValueError, match="`t0` must be a number"):
        read_sensor_log(good, t0="2024-01-01")
    iso = _write(tmp_path / "iso.csv", "time,y\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:01,2\n")
    with pytest.raises(
        ValueError, match=re.escape("row 1 (line 3), column 'time': timestamp '2024-01-01T00:00:01' lacks a UTC offset")
    ):
        read_sensor_log(iso)
    iso = _write(tmp_path / "iso2.csv", "time,y\n2024-01-01T00:00:00Z,1\n")
    with pytest.raises(ValueError, match="`t0` must be an ISO-8601 string or a datetime"):
        read_sensor_log(iso, t0=3.0)
    with pytest.raises(ValueError, match="`t0` '2024-01-01T00:00:00' lacks a UTC offset"):
        read_sensor_log(iso, t0="2024-01-01")


def test_parquet_needs_pyarrow(tmp_path, monkeypatch):
    path = write_sensor_log(tmp_path / "p.parquet", SensorLog([0.0], [1.0]))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="needs `pyarrow`"):
        read_sensor_log(path)
    assert read_sensor_log(write_sensor_log(tmp_path / "p.csv", SensorLog([0.0], [1.0]))).channels == ("y0",)


def test_sensor_log_constructor_checks():
    with pytest.raises(ValueError, match=re.escape("`ts` is not sorted: row 1 at t = 0 s comes after row 0")):
        SensorLog([1.0, 0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="`ys` must have shape \\(2, obs\\)"):
        SensorLog([0.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="`ys` has infinite entries"):
        SensorLog([0.0, 1.0], [1.0, np.inf])
    with pytest.raises(ValueError, match="`us` must be finite"):
        SensorLog([0.0, 1.0], [1.0, 2.0], us=[0.0, np.nan])
    with pytest.raises(ValueError, match="`channels` must name 1 columns"):
        SensorLog([0.0, 1.0], [1.0, 2.0], channels=["a", "b"])
    with pytest.raises(ValueError, match="both in `channels` and in `controls`"):
        SensorLog([0.0, 1.0], [1.0, 2.0], channels=["a"], us=[0.0, 1.0], controls=["a"])
    log = SensorLog([0.0, 1.0], [[1.0, 2.0], [3.0, 4.0]], mask=[[True, False], [True, True]])
    np.testing.assert_array_equal(log.ys, [[1.0, np.nan], [3.0, 4.0]])
    with pytest.raises(ValueError, match="`log` must be a SensorLog"):
        write_sensor_log("x.csv", {"ts": [0.0]})
