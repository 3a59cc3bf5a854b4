"""The server's configuration: defaults < YAML file < QUICKDRAFT_* environment < flags."""

import subprocess
import sys

import pytest
import yaml

from quickdraft.config import Config, ConfigError, ServerConfig, env_overrides, load_config


def test_defaults_are_the_bundled_demo():
    c = load_config(env={})
    assert c.models.target == "auto"
    assert c.models.draft == "auto"
    assert (c.server.host, c.server.port, c.server.api_key) == ("127.0.0.1", 8088, None)
    assert c.sampling.temperature == 0.0


def test_layers_file_then_env_then_overrides(tmp_path):
    f = tmp_path / "quickdraft.yaml"
    f.write_text(yaml.safe_dump({
        "models": {"target": "file-target", "k": 6},
        "server": {"port": 1111, "limits": {"queue_size": 3}},
    }))
    env = {"QUICKDRAFT_SERVER__PORT": "2222", "QUICKDRAFT_SERVER__LIMITS__MAX_TOKENS": "64",
           "QUICKDRAFT_CACHE": "/not/a/config/key"}
    c = load_config(f, env=env, overrides={"server.port": 3333})
    assert c.models.target == "file-target" and c.models.k == 6  # from the file
    assert c.server.limits.queue_size == 3  # from the file
    assert c.server.limits.max_tokens == 64  # from the environment, converted to int
    assert c.server.port == 3333  # the flag wins
    assert load_config(f, env=env).server.port == 2222  # the environment beats the file


def test_config_file_from_environment(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("models:\n  draft: none\n")
    assert load_config(env={"QUICKDRAFT_CONFIG": str(f)}).models.draft == "none"


def test_api_key_alias_and_empty_means_null():
    assert load_config(env={"QUICKDRAFT_API_KEY": "s3cret"}).server.api_key == "s3cret"
    assert load_config(env={"QUICKDRAFT_MODELS__THREADS": ""}).models.threads is None


def test_env_overrides_naming():
    assert env_overrides({"QUICKDRAFT_MODELS__CHAT_TEMPLATE": "chatml", "QUICKDRAFT_LLAMA_LOG": "1"}) == {
        "models.chat_template": "chatml"
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"env": {"QUICKDRAFT_SERVER__PROT": "1"}}, "no config key 'server.prot'"),
        ({"env": {"QUICKDRAFT_SERVER__PORT": "eighty"}}, "server.port"),
        ({"env": {}, "overrides": {"models.k": 0}}, "models.k"),
        ({"env": {}, "overrides": {"server": 1}}, "is a section"),
        ({"env": {}, "overrides": {"models.target.x": 1}}, "is a value, not a section"),
    ],
)
def test_bad_keys_and_values_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_config(**kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})
    typo = tmp_path / "typo.yaml"
    typo.write_text("models:\n  tagret: x\n")
    with pytest.raises(ConfigError, match="models.tagret"):
        load_config(typo, env={})


def test_non_loopback_host_needs_a_key():
    ServerConfig(host="127.0.0.1").check_exposure()
    ServerConfig(host="::1").check_exposure()
    ServerConfig(host="localhost").check_exposure()
    ServerConfig(host="0.0.0.0", api_key="k").check_exposure()
    for host in ("0.0.0.0", "192.168.1.5", "example.org"):
        with pytest.raises(ConfigError, match="without an API key"):
            ServerConfig(host=host).check_exposure()


def test_served_name():
    assert Config().models.served_name("gemma-3-270m-q8_0") == "gemma-3-270m-q8_0"  # target auto: the loaded one
    assert load_config(env={}, overrides={"models.target": "/models/foo-q4.gguf"}).models.served_name() == "foo-q4"
    assert load_config(env={}, overrides={"models.name": "mine"}).models.served_name() == "mine"
    assert Config().models.draft == "auto" and Config().models.exact is True
    assert load_config(env={}, overrides={"models.exact": False}).models.exact is False


def test_public_dict_masks_the_key():
    c = load_config(env={"QUICKDRAFT_API_KEY": "s3cret"})
    assert "s3cret" not in c.to_yaml()
    assert c.public_dict()["server"]["api_key"] == "***"


def run_cli(*args, env=None):
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKDRAFT_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "quickdraft", *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_config_show_cli():
    r = run_cli("config", "show", "--port", "9000", "--set", "sampling.temperature=0.5",
                env={"QUICKDRAFT_MODELS__DRAFT": "ngram", "QUICKDRAFT_API_KEY": "s3cret"})
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown["server"]["port"] == 9000
    assert shown["sampling"]["temperature"] == 0.5
    assert shown["models"]["draft"] == "ngram"
    assert shown["server"]["api_key"] == "***" and "s3cret" not in r.stdout
    Config.model_validate({**shown, "server": {**shown["server"], "api_key": None}})  # it round-trips


def test_config_show_cli_bad_key():
    r = run_cli("config", "show", "--set", "server.nope=1")
    assert r.returncode == 2
    assert "no config key 'server.nope'" in r.stderr


def test_serve_refuses_open_network_binding():
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2
    assert "without an API key" in r.stderr
