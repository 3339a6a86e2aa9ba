"""The --config file: profiles, defaults, and an error naming the key for every mistake."""

from __future__ import annotations

import pytest

from crdtdb.consensus.config import (
    ConfigError,
    Consistency,
    load_config,
    parse_config,
    profile_config,
)

NB, SB = "OVN_Northbound", "OVN_Southbound"


def test_default_is_everything_eventual_with_local_locks() -> None:
    config = parse_config({})
    assert config.policy(NB).consistency is Consistency.EVENTUAL
    assert config.lock_plugin is None
    assert config.plugins_used() == set()


def test_ovn_profile_alone_runs_on_one_machine() -> None:
    config = profile_config("ovn")
    assert config.policy(NB).consistency is Consistency.LINEARIZABLE
    assert config.policy(NB).plugin == "local"
    assert config.policy(SB).consistency is Consistency.EVENTUAL
    assert config.lock_plugin is None


def test_ovn_profile_with_etcd_puts_nb_and_locks_on_etcd() -> None:
    config = parse_config({"profile": "ovn", "plugins": {"etcd": {
        "endpoints": ["http://10.0.0.1:2379", "http://10.0.0.2:2379"], "lock_ttl_s": 5}}})
    assert config.policy(NB).plugin == "etcd"
    assert config.lock_plugin == "etcd"
    assert config.etcd.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert config.etcd.lock_ttl_s == 5
    assert config.policy(SB).consistency is Consistency.EVENTUAL


def test_file_overrides_profile(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('profile = "ovn"\n[databases.OVN_Northbound]\nconsistency = "eventual"\n')
    assert load_config(path).policy(NB).consistency is Consistency.EVENTUAL


@pytest.mark.parametrize(("doc", "where"), [
    ({"databse": {}}, "top level: unknown key(s) databse"),
    ({"profile": "openstack"}, "profile: unknown profile 'openstack'"),
    ({"databases": {NB: {"consistency": "strong"}}},
     f"databases.{NB}.consistency: expected"),
    ({"databases": {NB: {"plugin": "zookeeper"}}}, f"databases.{NB}.plugin: unknown plugin"),
    ({"databases": {NB: {"consistncy": "eventual"}}}, f"databases.{NB}: unknown key"),
    ({"plugins": {"etcd": {"endpoints": []}}}, "plugins.etcd.endpoints"),
    ({"plugins": {"etcd": {"lock_ttl_s": 0}}}, "plugins.etcd.lock_ttl_s"),
    ({"plugins": {"etcd": {"lock_ttl_s": "soon"}}}, "plugins.etcd:"),
    ({"locks": {"plugin": "raft"}}, "locks.plugin: unknown plugin"),
])
def test_mistakes_name_the_key(doc: dict, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert where in str(err.value)


def test_validate_refuses_what_cannot_be_served() -> None:
    # A split whose references cross levels is refused when the databases open (with the
    # schema): tests/test_consensus_split.py.
    with pytest.raises(ConfigError, match="no schema given"):
        parse_config({"databases": {NB: {}}}).validate([SB])
    with pytest.raises(ConfigError, match=r"plugins\.ovsdb\.remotes"):
        parse_config({"databases": {NB: {"consistency": "linearizable",
                                         "plugin": "ovsdb"}}}).validate([NB])


def test_unreadable_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[databases\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(bad)


def test_a_split_database_cannot_use_the_ovsdb_relay() -> None:
    config = parse_config({"plugins": {"ovsdb": {"remotes": "tcp:127.0.0.1:6641"}},
                           "databases": {"OVN_Northbound": {
                               "consistency": "eventual", "plugin": "ovsdb", "tables": {
                                   "Chassis_Template_Var": {"consistency": "linearizable"}}}}})
    with pytest.raises(ConfigError, match="cannot use the ovsdb plugin"):
        config.validate()
