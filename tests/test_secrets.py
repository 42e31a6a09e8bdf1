"""Credentials never show in a repr or str of the config or of storage options."""

from __future__ import annotations

from wdstream.config import Config, load_config
from wdstream.errors import is_secret_name, redact_options
from wdstream.write.executors import split_secrets

SECRET = "wJalrXUtnFEMI-do-not-show"
KEY = "AKIAREPRTESTKEY00001"


def _options():
    return {
        "key": KEY,
        "secret": SECRET,
        "anon": False,
        "client_kwargs": {
            "endpoint_url": "http://u:pw@h:9000/?X-Amz-Signature=s",
            "aws_session_token": SECRET,
            "region_name": "r",
        },
        "config_kwargs": {"retries": {"max_attempts": 3}},
    }


def test_config_repr_and_str_redact_credentials():
    config = Config(storage_options=_options(), shards=["s3://b/x?X-Amz-Credential=abc"])
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert SECRET not in text and KEY not in text and "pw@" not in text
        assert "X-Amz" not in text
        assert "region_name" in text and "max_attempts" in text and "'***'" in text
    assert config.storage_options["secret"] == SECRET  # the values themselves are kept


def test_config_from_yaml_redacts_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"storage_options:\n  key: {KEY}\n  secret: {SECRET}\n")
    assert SECRET not in repr(load_config(path)) and KEY not in str(load_config(path))


def test_storage_options_redaction_uses_the_secret_rule_of_the_executors():
    shown = redact_options(_options())
    assert shown["key"] == shown["secret"] == "***"
    assert shown["client_kwargs"]["aws_session_token"] == "***"
    assert shown["client_kwargs"]["endpoint_url"] == "http://***@h:9000/"
    assert shown["anon"] is False and shown["config_kwargs"] == {"retries": {"max_attempts": 3}}
    _, secrets = split_secrets(_options())  # what a cluster executor keeps out of its tasks
    assert {k for k in secrets} == {k for k, v in shown.items() if v == "***"} | {"client_kwargs"}
    assert all(is_secret_name(n) for n in ("password", "sas_token", "account_key"))
    assert not is_secret_name("endpoint_url")
