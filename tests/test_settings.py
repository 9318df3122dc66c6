"""Settings: environment variables, unsafe defaults refused, the runtime picks the deployer."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from api.app import build_deployer
from api.deployers.local import LocalDeployer
from domain.settings import Settings
from infra.pulumi_deployer import PulumiDeployer


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIF_PORT", "9090")
    monkeypatch.setenv("AIF_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AIF_ENGINE_ARGS", '["--error-rate", "0.5"]')
    settings = Settings()
    assert settings.port == 9090
    assert settings.data_dir == tmp_path
    assert settings.engine_args == ["--error-rate", "0.5"]


def test_data_dir_defaults_to_a_per_user_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIF_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "/home/someone/.data")
    assert Settings().data_dir == Path("/home/someone/.data/aif")


def test_production_refuses_the_embedded_store_and_default_passphrase() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(environment="production", runtime="kubernetes")
    message = str(caught.value)
    assert "AIF_MONGODB_URL must be set" in message
    assert "AIF_PULUMI_PASSPHRASE" in message
    Settings(
        environment="production",
        runtime="kubernetes",
        mongodb_url="mongodb://db:27017",
        pulumi_passphrase="a-secret-of-our-own",
    )


def test_runtime_picks_the_deployer(tmp_path: Path) -> None:
    assert isinstance(build_deployer(Settings(data_dir=tmp_path)), LocalDeployer)
    kubernetes = Settings(data_dir=tmp_path, runtime="kubernetes")
    assert isinstance(build_deployer(kubernetes), PulumiDeployer)
