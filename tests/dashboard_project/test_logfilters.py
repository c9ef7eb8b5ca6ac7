"""Repeated channels-redis errors are logged once per minute, not once per
second (dashboard_project/logfilters.py)."""

from __future__ import annotations

import logging

from dashboard_project.logfilters import RepeatFilter


def record(name: str, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_identical_records_pass_once_per_period_and_say_how_many_were_held_back():
    now = [100.0]
    repeats = RepeatFilter(loggers=("channels_redis",), seconds=60, clock=lambda: now[0])
    passed = []
    for second in range(125):
        now[0] = 100.0 + second
        r = record("channels_redis.pubsub", "Unexpected exception in receive task")
        if repeats.filter(r):
            passed.append((second, r.getMessage()))
    assert passed == [
        (0, "Unexpected exception in receive task"),
        (60, "Unexpected exception in receive task [59 more like this in the last 60 s]"),
        (120, "Unexpected exception in receive task [59 more like this in the last 60 s]"),
    ]


def test_other_messages_and_other_loggers_are_not_held_back():
    repeats = RepeatFilter(loggers=("channels_redis",), seconds=60, clock=lambda: 0.0)
    assert repeats.filter(record("channels_redis.pubsub", "first kind"))
    assert repeats.filter(record("channels_redis.pubsub", "second kind %s", "x"))
    assert not repeats.filter(record("channels_redis.pubsub", "first kind"))
    for _ in range(3):
        assert repeats.filter(record("realtime.layer", "a layer probe did not come back"))


def test_the_count_keeps_the_records_own_arguments_intact():
    now = [0.0]
    repeats = RepeatFilter(loggers=("channels_redis",), seconds=10, clock=lambda: now[0])
    assert repeats.filter(record("channels_redis.core", "lost %d%% of %s", 5, "messages"))
    assert not repeats.filter(record("channels_redis.core", "lost %d%% of %s", 5, "messages"))
    now[0] = 10.0
    r = record("channels_redis.core", "lost %d%% of %s", 7, "messages")
    assert repeats.filter(r)
    assert r.getMessage() == "lost 7% of messages [1 more like this in the last 10 s]"


def test_settings_put_the_filter_on_the_console_handler():
    filters = [f for handler in logging.getLogger().handlers for f in handler.filters]
    assert [f.loggers for f in filters if isinstance(f, RepeatFilter)] == [("channels_redis", "ingest.views")]
