"""W&B runs offline unless the user is logged in (API key or a ``wandb login`` entry in ~/.netrc)."""

from __future__ import annotations

import pytest

from mpnn_ip.train.loggers import wandb_mode


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_offline_without_credentials(clean_env):
    assert wandb_mode() == "offline"  # the netrc file does not exist


def test_online_after_wandb_login(clean_env):
    clean_env.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    assert wandb_mode() == "online"


def test_netrc_of_other_hosts_stays_offline(clean_env):
    clean_env.write_text("machine example.org\n  login user\n  password secret\n")
    assert wandb_mode() == "offline"


def test_api_key_and_explicit_mode_win(clean_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "key")
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
