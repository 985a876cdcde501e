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
