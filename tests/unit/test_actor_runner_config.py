"""Actor settings: every one a flag and a CORRAL_* variable (actor/runner.py SETTINGS), flag over
environment over default, bad values refused naming the setting, and the README table."""
from __future__ import annotations

import pathlib

import pytest

from actor import runner

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BASE = {"CORRAL_COORDINATOR": "coordinator:7070", "CORRAL_APP": "actor.demo"}


def resolve(argv, env):
    return runner.resolve_settings(runner.build_parser().parse_args(argv), env)


def test_every_setting_is_a_flag_and_an_environment_variable():
    flags = {opt for action in runner.build_parser()._actions for opt in action.option_strings}
    for setting in runner.SETTINGS:
        assert setting.flag in flags, setting
        assert setting.env.startswith("CORRAL_"), setting
    assert flags - {s.flag for s in runner.SETTINGS} == {"-h", "--help"}


def test_environment_alone_configures_an_actor():
    env = {**BASE, "CORRAL_SLOTS": "3", "CORRAL_ACTOR_ID": "pod-1", "CORRAL_ACTOR_GRACE_S": "7.5",
           "CORRAL_ACTOR_LABELS": "zone=a, pool=gpu", "CORRAL_LOG_LEVEL": "debug"}
    cfg = resolve([], env)
    assert (cfg.coordinator, cfg.app, cfg.slots, cfg.actor_id, cfg.grace_s) == \
        ("coordinator:7070", "actor.demo", 3, "pod-1", 7.5)
    assert cfg.labels == {"zone": "a", "pool": "gpu"} and cfg.log_level == "DEBUG"


def test_a_flag_beats_the_environment_and_defaults_fill_the_rest():
    env = {**BASE, "CORRAL_SLOTS": "3", "CORRAL_ACTOR_LABELS": "zone=a"}
    cfg = resolve(["--slots", "5", "--label", "zone=b", "--coordinator", "other:1"], env)
    assert (cfg.slots, cfg.labels, cfg.coordinator) == (5, {"zone": "b"}, "other:1")
    assert cfg.grace_s == 5.0 and cfg.log_level == "INFO" and cfg.actor_id  # defaults


def test_telemetry_settings_come_from_flags_or_the_environment_and_are_off_by_default():
    cfg = resolve([], BASE)
    assert (cfg.log_format, cfg.metrics_listen, cfg.otlp_endpoint, cfg.trace_file) == ("text", "", "", "")
    env = {**BASE, "CORRAL_LOG_FORMAT": "JSON", "CORRAL_METRICS_LISTEN": "0.0.0.0:9464",
           "CORRAL_OTLP_ENDPOINT": "http://c:4317", "CORRAL_TRACE_FILE": "/tmp/spans.jsonl"}
    cfg = resolve([], env)
    assert (cfg.log_format, cfg.metrics_listen, cfg.otlp_endpoint, cfg.trace_file) == \
        ("json", "0.0.0.0:9464", "http://c:4317", "/tmp/spans.jsonl")
    cfg = resolve(["--log-format", "text", "--metrics-listen", ":9000", "--otlp-endpoint", "http://d:4317",
                   "--trace-file", "/tmp/other.jsonl"], env)
    assert (cfg.log_format, cfg.metrics_listen, cfg.otlp_endpoint, cfg.trace_file) == \
        ("text", ":9000", "http://d:4317", "/tmp/other.jsonl")


@pytest.mark.parametrize("argv, env, named", [
    ([], {"CORRAL_APP": "actor.demo"}, "--coordinator / CORRAL_COORDINATOR"),
    ([], {"CORRAL_COORDINATOR": "c:1"}, "--app / CORRAL_APP"),
    ([], {**BASE, "CORRAL_SLOTS": "many"}, "--slots / CORRAL_SLOTS"),
    (["--slots", "0"], BASE, "--slots / CORRAL_SLOTS"),
    ([], {**BASE, "CORRAL_ACTOR_GRACE_S": "-1"}, "--grace-s / CORRAL_ACTOR_GRACE_S"),
    ([], {**BASE, "CORRAL_ACTOR_GRACE_S": "soon"}, "--grace-s / CORRAL_ACTOR_GRACE_S"),
    ([], {**BASE, "CORRAL_ACTOR_LABELS": "zone=a,oops"}, "--label / CORRAL_ACTOR_LABELS"),
    ([], {**BASE, "CORRAL_LOG_LEVEL": "chatty"}, "--log-level / CORRAL_LOG_LEVEL"),
    (["--log-level", "chatty"], BASE, "--log-level / CORRAL_LOG_LEVEL"),
    ([], {**BASE, "CORRAL_LOG_FORMAT": "xml"}, "--log-format / CORRAL_LOG_FORMAT"),
    (["--log-format", "yaml"], BASE, "--log-format / CORRAL_LOG_FORMAT"),
    ([], {**BASE, "CORRAL_METRICS_LISTEN": "9464"}, "--metrics-listen / CORRAL_METRICS_LISTEN"),
])
def test_a_bad_setting_is_refused_naming_it(argv, env, named):
    with pytest.raises(runner.ActorConfigError) as info:
        resolve(argv, env)
    assert named in str(info.value)


def test_a_bad_setting_exits_2_before_anything_starts(monkeypatch, capsys):
    for key in list(__import__("os").environ):
        if key.startswith("CORRAL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CORRAL_COORDINATOR", "127.0.0.1:1")
    monkeypatch.setenv("CORRAL_APP", "actor.demo")
    monkeypatch.setenv("CORRAL_LOG_LEVEL", "chatty")
    assert runner.main([]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "CORRAL_LOG_LEVEL" in err


def test_readme_documents_every_actor_setting():
    text = README.read_text()
    for setting in runner.SETTINGS:
        assert f"| `{setting.flag}` | `{setting.env}` |" in text, setting


def test_slots_beyond_the_wire_limit_are_refused():
    # hello.slots is an int32: a larger count failed every connect with a traceback, retried forever.
    with pytest.raises(runner.ActorConfigError) as info:
        resolve([], {**BASE, "CORRAL_SLOTS": str(1 << 31)})
    assert "CORRAL_SLOTS" in str(info.value)


@pytest.mark.parametrize("target", ["::::", "localhost", "host:", "host:0", "host:70000", "ho st:7070",
                                    ":7070", "[nope]:7070", "::1:7070"])
def test_a_malformed_coordinator_address_is_refused(target):
    with pytest.raises(runner.ActorConfigError, match="--coordinator"):
        resolve(["--coordinator", target], BASE)


@pytest.mark.parametrize("target", ["localhost:7070", "10.0.0.5:7070", "corral-coordinator.ns.svc:7070",
                                    "[::1]:7070", "dns:///corral:7070", "unix:/run/corral.sock"])
def test_coordinator_addresses_that_are_accepted(target):
    assert resolve(["--coordinator", target], BASE).coordinator == target
