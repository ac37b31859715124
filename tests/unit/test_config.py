"""The config tree: sources in order, typo'd keys named with a fix, secrets never shown."""

import json

import pytest

from streamtrain.cli import main
from streamtrain.config import Config, dump_config, load_config
from streamtrain.errors import ConfigError


def test_defaults_validate():
    config = load_config(environ={})
    assert config == Config()
    assert config.sampler.name == "xir"


def test_file_then_env_then_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[trainer]\nbatch_size = 128\nmax_batch_latency_s = 2.5\n[run]\nname = "file"\n')
    env = {"STREAMTRAIN_TRAINER__BATCH_SIZE": "256", "STREAMTRAIN_RUN__NAME": "env"}
    config = load_config(path, overrides=["run.name=flag"], environ=env)
    assert config.trainer.batch_size == 256  # env beats file
    assert config.trainer.max_batch_latency_s == 2.5  # file beats default
    assert config.run.name == "flag"  # flag beats env


def test_yaml_file_and_nested_sampler_params(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sampler:\n  name: cbns\n  cbns:\n    bank_size: 77\n")
    config = load_config(path, environ={})
    assert (config.sampler.name, config.sampler.cbns.bank_size) == ("cbns", 77)


def test_unknown_key_names_key_and_suggests_fix():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["trainer.batchsize=3"], environ={})
    assert "trainer.batchsize" in str(err.value)
    assert "did you mean `trainer.batch_size`" in str(err.value)


def test_bad_value_names_key_env_var_and_flag():
    with pytest.raises(ConfigError) as err:
        load_config(environ={"STREAMTRAIN_SAMPLER__XIR__MIX_LAMBDA": "1.5"})
    text = str(err.value)
    assert "sampler.xir.mix_lambda" in text and "STREAMTRAIN_SAMPLER__XIR__MIX_LAMBDA" in text


def test_sasl_requires_credentials():
    with pytest.raises(ConfigError, match="sasl"):
        load_config(overrides=["kafka.security_protocol=SASL_SSL"], environ={})


def test_secrets_masked_in_dump_and_errors():
    env = {
        "STREAMTRAIN_REDIS__PASSWORD": "hunter2",
        "STREAMTRAIN_KAFKA__SASL_PASSWORD": "swordfish",
    }
    config = load_config(environ=env)
    assert config.redis.password.get_secret_value() == "hunter2"
    assert "hunter2" not in json.dumps(dump_config(config))
    assert "hunter2" not in repr(config)
    with pytest.raises(ConfigError) as err:
        load_config(environ={**env, "STREAMTRAIN_TRAINER__BATCH_SIZE": "0"})
    assert "swordfish" not in str(err.value) and "hunter2" not in str(err.value)


def test_numeric_looking_secret_stays_a_string():
    config = load_config(environ={"STREAMTRAIN_REDIS__PASSWORD": "123456"}, overrides=["kafka.sasl_password=007"])
    assert config.redis.password.get_secret_value() == "123456"
    assert config.kafka.sasl_password.get_secret_value() == "007"


def test_numeric_looking_text_stays_text_and_numbers_still_parse():
    # A run named by a random hex string that happens to be all digits once failed CI.
    config = load_config(
        environ={"STREAMTRAIN_RUN__NAME": "7043590443", "STREAMTRAIN_KAFKA__TOPIC": "2024"},
        overrides=["kafka.group_id=0012", "trainer.batch_size=512", "sampler.xir.mix_lambda=0.25",
                   'kafka.bootstrap_servers=["127.0.0.1:1234"]', "kafka.sasl_username=null"],
    )
    assert config.kafka.bootstrap_servers == ["127.0.0.1:1234"]
    assert config.kafka.sasl_username is None
    assert config.run.name == "7043590443"
    assert config.kafka.topic == "2024"
    assert config.kafka.group_id == "0012"
    assert config.trainer.batch_size == 512
    assert config.sampler.xir.mix_lambda == 0.25


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_cli_config_show_masks_and_typo_exits_2(capsys, monkeypatch):
    monkeypatch.setenv("STREAMTRAIN_REDIS__PASSWORD", "hunter2")
    assert main(["config", "show", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["redis"]["password"] == "**********"
    assert main(["--set", "trainer.batchsize=3", "config", "show"]) == 2
    assert "trainer.batch_size" in capsys.readouterr().err


def test_cli_toml_output_round_trips(tmp_path, capsys):
    assert main(["--set", "trainer.batch_size=333", "config", "show"]) == 0
    path = tmp_path / "shown.toml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path, environ={}).trainer.batch_size == 333


def test_unset_temperature_follows_the_sampler_and_an_explicit_one_wins(tmp_path):
    assert load_config(environ={}).model.temperature == 0.3  # xir, the default sampler
    assert load_config(environ={}, overrides=["sampler.name=bir"]).model.temperature == 0.3
    assert load_config(environ={}, overrides=["sampler.name=inbatch_logq"]).model.temperature == 0.1
    assert load_config(environ={"STREAMTRAIN_SAMPLER__NAME": "full"}).model.temperature == 0.1
    path = tmp_path / "c.toml"
    path.write_text('[model]\ntemperature = 0.07\n[sampler]\nname = "xir"\n')
    assert load_config(path, environ={}).model.temperature == 0.07
    assert load_config(environ={}, overrides=["model.temperature=0.2"]).model.temperature == 0.2
