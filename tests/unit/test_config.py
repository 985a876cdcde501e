"""Coordinator settings: flags, environment variables, validation, and the README table."""
from __future__ import annotations

import argparse
import pathlib

import pytest

from coordinator import config as C

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def parse(argv, env=None):
    parser = argparse.ArgumentParser()
    C.add_arguments(parser)
    return C.from_arguments(parser.parse_args(argv), env or {})


def test_defaults_without_flags_or_environment():
    assert parse([]) == C.CoordinatorConfig()


def test_environment_sets_a_value_and_a_flag_beats_it():
    env = {"CORRAL_LEASE_TTL_S": "4", "CORRAL_DATA_DIR": "/env"}
    cfg = parse(["--data-dir", "/flag"], env)
    assert cfg.lease_ttl_s == 4.0 and cfg.data_dir == "/flag"


def test_boolean_setting_from_flag_and_environment():
    assert parse(["--truncate-corrupt-wal"]).truncate_corrupt_wal is True
    assert parse([], {"CORRAL_TRUNCATE_CORRUPT_WAL": "yes"}).truncate_corrupt_wal is True
    assert parse([], {"CORRAL_TRUNCATE_CORRUPT_WAL": "0"}).truncate_corrupt_wal is False


@pytest.mark.parametrize("argv, env, named", [
    (["--lease-ttl-s", "-1"], {}, "--lease-ttl-s"),
    (["--lease-ttl-s", "abc"], {}, "--lease-ttl-s"),
    ([], {"CORRAL_LISTEN": "nohostport"}, "CORRAL_LISTEN"),
    ([], {"CORRAL_MAX_INPUT_BYTES": "0"}, "CORRAL_MAX_INPUT_BYTES"),
    ([], {"CORRAL_LOG_LEVEL": "LOUD"}, "CORRAL_LOG_LEVEL"),
    (["--heartbeat-interval-s", "20"], {}, "--heartbeat-interval-s"),
])
def test_bad_value_is_refused_naming_the_setting(argv, env, named):
    with pytest.raises(C.ConfigError) as info:
        parse(argv, env)
    assert named in str(info.value)


def test_heartbeat_interval_defaults_to_a_third_of_the_ttl():
    assert parse(["--lease-ttl-s", "3"]).heartbeat_interval_ms == 1000


def test_readme_documents_every_setting():
    text = README.read_text()
    for setting in C.SETTINGS:
        assert f"`{setting.flag}`" in text and f"`{setting.env}`" in text, setting.name


@pytest.mark.parametrize("name", [s.name for s in C.SETTINGS if isinstance(s.default, float)])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_a_float_setting_refuses_non_finite_values(name, value):
    # `float()` parses these; an infinite TTL/grace/keepalive then crashed start-up with
    # OverflowError (int(inf * 1000)) instead of a message naming the setting.
    env = "CORRAL_" + name.upper()
    with pytest.raises(C.ConfigError) as info:
        parse([], {env: value})
    assert env in str(info.value)


@pytest.mark.parametrize("env, value", [
    ("CORRAL_MAX_MESSAGE_BYTES", str(1 << 31)),  # a gRPC channel option is a C int
    ("CORRAL_KEEPALIVE_TIME_S", "1e7"),  # milliseconds in a C int: at most ~24.8 days
    ("CORRAL_KEEPALIVE_TIMEOUT_S", "1e7"),
    ("CORRAL_KEEPALIVE_MIN_PING_INTERVAL_S", "1e7"),
])
def test_a_value_too_large_for_grpc_is_refused_naming_the_setting(env, value):
    with pytest.raises(C.ConfigError) as info:
        parse([], {env: value})
    assert env in str(info.value)
