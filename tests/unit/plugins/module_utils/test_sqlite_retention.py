# -*- coding: utf-8 -*-
"""Retention = restic ``forget --keep-*``.  Expected sets were worked out by hand.

restic's rules (doc of ``restic forget`` and internal/restic/snapshot_policy.go):
walk snapshots newest first; each --keep-X rule with count n > 0 keeps a snapshot
when its period (hour / day / ISO week / month / year; "last": every snapshot)
differs from the period of the last snapshot that rule kept, and then spends one
count; a rule that still has count left when it reaches the oldest snapshot keeps
that one too; rules are ORed; -1 = unlimited; an empty policy keeps everything.
"""
from __future__ import absolute_import, division, print_function

import datetime
import os

import pytest

from ansible_collections.kbxy.platform.plugins.module_utils import sqlite_ops as so


def T(s):
    return datetime.datetime.strptime(s, "%Y-%m-%d %H:%M").replace(tzinfo=datetime.timezone.utc)


def run(times, keep, protect=()):
    items = [(t, T(t)) for t in times]
    kept, pruned = so.apply_retention(items, keep, protect=protect)
    assert sorted(kept + pruned) == sorted(times)
    return set(kept), set(pruned)


DAYS = ["2024-01-10 23:00", "2024-01-10 08:00", "2024-01-09 12:00", "2024-01-07 12:00", "2024-01-07 06:00",
        "2024-01-05 12:00"]

WEEKS = [
    "2024-01-15 10:00",  # Mon, ISO 2024-W03
    "2024-01-14 10:00",  # Sun, ISO 2024-W02
    "2024-01-08 10:00",  # Mon, ISO 2024-W02
    "2024-01-07 10:00",  # Sun, ISO 2024-W01
    "2024-01-01 10:00",  # Mon, ISO 2024-W01
    "2023-12-31 10:00",  # Sun, ISO 2023-W52
]

YEAR_EDGE = [
    "2025-01-05 10:00",  # Sun, ISO 2025-W01
    "2024-12-30 10:00",  # Mon, ISO 2025-W01 (calendar year 2024!)
    "2024-12-29 10:00",  # Sun, ISO 2024-W52
]

HOURS = ["2024-05-01 10:59", "2024-05-01 10:00", "2024-05-01 09:30", "2024-05-01 08:15"]

MONTHS = ["2024-03-31 12:00", "2024-03-01 12:00", "2024-01-15 12:00", "2023-12-01 12:00", "2023-11-30 12:00"]

CASES = [
    # (id, times, keep, expected kept)
    ("daily3", DAYS, {"daily": 3}, {"2024-01-10 23:00", "2024-01-09 12:00", "2024-01-07 12:00"}),
    # 4 distinct days < 5: every day's newest, and the oldest kept because the count is not used up
    ("daily5-keeps-oldest", DAYS, {"daily": 5},
     {"2024-01-10 23:00", "2024-01-09 12:00", "2024-01-07 12:00", "2024-01-05 12:00"}),
    ("daily5-oldest-same-day", ["2024-01-02 12:00", "2024-01-02 06:00", "2024-01-01 18:00", "2024-01-01 09:00"],
     {"daily": 5}, {"2024-01-02 12:00", "2024-01-01 18:00", "2024-01-01 09:00"}),
    ("daily-unlimited", DAYS, {"daily": -1},
     {"2024-01-10 23:00", "2024-01-09 12:00", "2024-01-07 12:00", "2024-01-05 12:00"}),
    ("last2", DAYS, {"last": 2}, {"2024-01-10 23:00", "2024-01-10 08:00"}),
    ("last2-daily2-ored", DAYS, {"last": 2, "daily": 2}, {"2024-01-10 23:00", "2024-01-10 08:00", "2024-01-09 12:00"}),
    ("weekly2", WEEKS, {"weekly": 2}, {"2024-01-15 10:00", "2024-01-14 10:00"}),
    ("weekly3-iso-sunday", WEEKS, {"weekly": 3}, {"2024-01-15 10:00", "2024-01-14 10:00", "2024-01-07 10:00"}),
    ("weekly4", WEEKS, {"weekly": 4}, {"2024-01-15 10:00", "2024-01-14 10:00", "2024-01-07 10:00", "2023-12-31 10:00"}),
    ("weekly2-iso-year-edge", YEAR_EDGE, {"weekly": 2}, {"2025-01-05 10:00", "2024-12-29 10:00"}),
    ("yearly2-year-edge", YEAR_EDGE, {"yearly": 2}, {"2025-01-05 10:00", "2024-12-30 10:00"}),
    ("weekly2-yearly2", YEAR_EDGE, {"weekly": 2, "yearly": 2}, set(YEAR_EDGE)),
    ("hourly2", HOURS, {"hourly": 2}, {"2024-05-01 10:59", "2024-05-01 09:30"}),
    ("monthly3-skips-empty-months", MONTHS, {"monthly": 3}, {"2024-03-31 12:00", "2024-01-15 12:00", "2023-12-01 12:00"}),
    ("monthly1-yearly1", MONTHS, {"monthly": 1, "yearly": 1}, {"2024-03-31 12:00"}),
    ("yearly2", MONTHS, {"yearly": 2}, {"2024-03-31 12:00", "2023-12-01 12:00"}),
    ("empty-policy-keeps-all", DAYS, {}, set(DAYS)),
    ("all-zero-keeps-all", DAYS, {"daily": 0, "last": 0}, set(DAYS)),
    ("hourly1-daily2-weekly1", DAYS, {"hourly": 1, "daily": 2, "weekly": 1}, {"2024-01-10 23:00", "2024-01-09 12:00"}),
]


@pytest.mark.parametrize("times,keep,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_retention_table(times, keep, expected):
    kept, pruned = run(times, keep)
    assert kept == expected
    assert pruned == set(times) - expected


def test_protect_keeps_a_backup_the_policy_would_prune():
    kept, pruned = run(DAYS, {"last": 1}, protect=("2024-01-05 12:00",))
    assert kept == {"2024-01-10 23:00", "2024-01-05 12:00"}


def test_input_order_does_not_matter():
    a = run(list(reversed(WEEKS)), {"weekly": 3})
    b = run(WEEKS, {"weekly": 3})
    assert a == b


def test_kept_and_pruned_are_newest_first():
    items = [(t, T(t)) for t in DAYS[::-1]]
    kept, pruned = so.apply_retention(items, {"daily": 2})
    assert kept == ["2024-01-10 23:00", "2024-01-09 12:00"]
    assert pruned == ["2024-01-10 08:00", "2024-01-07 12:00", "2024-01-07 06:00", "2024-01-05 12:00"]


@pytest.mark.parametrize("keep,msg", [({"dayly": 1}, "unknown rule"), ({"daily": -2}, "not allowed")])
def test_bad_policy(keep, msg):
    with pytest.raises(so.SqliteOpsError, match=msg):
        so.apply_retention([], keep)


def test_list_backups_and_plan(tmp_path):
    names = ["app-20240110T230000Z.db.gz", "app-20240110T080000Z.db", "app-20240109T120000.250000Z.db.gz",
             "app-old-20240101T000000Z.db.gz",  # other prefix
             "app-20240108T000000Z.db.gz.json", ".app-20240108T000000Z.db.gz.123.tmp", "apps-20240101T000000Z.db"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    found = dict(so.list_backups(str(tmp_path), "app"))
    assert set(found) == {"app-20240110T230000Z.db.gz", "app-20240110T080000Z.db", "app-20240109T120000.250000Z.db.gz"}
    assert found["app-20240109T120000.250000Z.db.gz"] == T("2024-01-09 12:00").replace(microsecond=250000)
    kept, pruned = so.plan_retention(str(tmp_path), "app", {"daily": 1}, new_name="app-20240111T000000Z.db.gz")
    assert kept == ["app-20240111T000000Z.db.gz"]
    assert set(pruned) == {"app-20240110T230000Z.db.gz", "app-20240110T080000Z.db", "app-20240109T120000.250000Z.db.gz"}
    assert so.remove_stale_temps(str(tmp_path), "app") == [".app-20240108T000000Z.db.gz.123.tmp"]
    assert not os.path.exists(str(tmp_path / ".app-20240108T000000Z.db.gz.123.tmp"))
