"""conf.model: the instances of a model class that were given the same
fields share one model_fields_set (7.3 MB of a 10,000-host config's 12.9
was one set per instance); what pydantic does with that set stays right."""

from hoststated.conf.load import load_text
from hoststated.conf.model import Config, Host
from hoststated.parent import wire_config

CONF = """
table <web> { 198.51.100.11, 198.51.100.12 retry 2, 198.51.100.13 }
redirect "www" {
	listen on 203.0.113.10 port 80
	forward to <web> port 80 check http "/" code 200
}
"""


def test_hosts_given_the_same_fields_share_one_set():
    a = Host(id=1, name="198.51.100.11", table="web:80")
    b = Host(id=2, name="198.51.100.12", table="web:80", retry=2)
    c = Host(id=3, name="198.51.100.13", table="web:80")
    assert a.model_fields_set is c.model_fields_set == {"id", "name", "table"}
    # a host given another field has its own set, with that field in it
    assert b.model_fields_set == {"id", "name", "table", "retry"}
    # the wire form names every field: a child's hosts share one set too
    config = Config.model_validate(wire_config(load_text(CONF, lookup=False)))
    x, y, z = config.tables[0].hosts
    assert x.model_fields_set is y.model_fields_set is z.model_fields_set


def test_a_copy_with_changes_leaves_the_shared_set_alone():
    config = Config.model_validate(wire_config(load_text(CONF, lookup=False)))
    a, _, c = config.tables[0].hosts
    before = set(a.model_fields_set)
    changed = a.model_copy(update={"weight": 7})
    assert changed.weight == 7 and "weight" in changed.model_fields_set
    assert a.model_fields_set == before and c.model_fields_set == before
    assert a.model_fields_set is c.model_fields_set


def test_the_config_reads_and_dumps_as_before():
    config = load_text(CONF, lookup=False)
    wire = wire_config(config)
    again = Config.model_validate(wire)
    assert again == config and wire_config(again) == wire
