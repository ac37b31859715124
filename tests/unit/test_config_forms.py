"""Config forms a review found rejected or mangled: resampler choice, broker lists, quoted secrets,
and the XIR mixing default the project's own measurements chose."""

import pytest
import torch

from streamtrain.config import BOOTSTRAP_FORMS, load_config
from streamtrain.errors import ConfigError
from streamtrain.sampling import build_sampler


@pytest.mark.parametrize("name", ["xir", "bir"])
def test_resampling_is_a_config_key_the_sampler_uses(name: str) -> None:
    config = load_config(overrides=[f"sampler.name={name}", f"sampler.{name}.resampling=systematic"], environ={})
    sampler = build_sampler(config.sampler, batch_size=8, seed=0, device=torch.device("cpu"))
    assert sampler.resampling == "systematic"
    default = build_sampler(load_config(overrides=[f"sampler.name={name}"], environ={}).sampler,
                            batch_size=8, seed=0, device=torch.device("cpu"))
    assert default.resampling == "multinomial"


def test_unknown_resampler_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sampler\.xir\.resampling"):
        load_config(overrides=["sampler.xir.resampling=stratified"], environ={})


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("host:9092", ["host:9092"]),
        ("127.0.0.1:9092", ["127.0.0.1:9092"]),
        ("a:1, b:2,c:3", ["a:1", "b:2", "c:3"]),
        ('["a:1","b:2"]', ["a:1", "b:2"]),
    ],
)
def test_bootstrap_servers_accepts_every_kafka_form(value: str, want: list[str]) -> None:
    assert load_config(overrides=[f"kafka.bootstrap_servers={value}"], environ={}).kafka.bootstrap_servers == want
    env = {"STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS": value}
    assert load_config(environ=env).kafka.bootstrap_servers == want


@pytest.mark.parametrize("value", ["9092", "host", "a:1,,b:2", "[]", "host:port"])
def test_bad_bootstrap_servers_show_the_accepted_forms(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"kafka.bootstrap_servers={value}"], environ={})
    assert "kafka.bootstrap_servers" in str(err.value) and BOOTSTRAP_FORMS in str(err.value)


@pytest.mark.parametrize(
    ("typed", "want"),
    [('"123456"', "123456"), ("123456", "123456"), ('"true"', "true"), ("pa\"ss", 'pa"ss'), ('"', '"')],
)
def test_password_is_never_left_with_json_quotes(typed: str, want: str) -> None:
    """deploy/README says quoting is harmless: a JSON string literal gives the text inside it."""
    config = load_config(environ={"STREAMTRAIN_REDIS__PASSWORD": typed})
    assert config.redis.password is not None and config.redis.password.get_secret_value() == want
    flag = load_config(overrides=[f"redis.password={typed}"], environ={})
    assert flag.redis.password is not None and flag.redis.password.get_secret_value() == want


def test_xir_mix_lambda_defaults_to_the_measured_best() -> None:
    config = load_config(environ={})
    assert config.sampler.xir.mix_lambda == 0.2
    sampler = build_sampler(config.sampler, batch_size=8, seed=0, device=torch.device("cpu"))
    assert sampler.mix_lambda == 0.2
