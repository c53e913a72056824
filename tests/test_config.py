"""Settings: env prefix, local addresses that follow the ports and the stack's passwords,
security passthrough."""

from __future__ import annotations

import os
import stat
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from spendstream.config import Settings
from spendstream.stack import credentials
from spendstream.stack.process import StackError
from spendstream.stack.services import Kafka, Prometheus, Redis


@pytest.fixture(autouse=True)
def own_stack_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A stack dir of the test's own (the checkout's .stack has generated passwords), and no
    SPENDSTREAM_* setting from the caller's environment (ports of a private stack)."""
    for var in [v for v in os.environ if v.startswith("SPENDSTREAM_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("SPENDSTREAM_STACK_DIR", str(tmp_path / "stack"))
    return tmp_path / "stack"


def write_secret(stack_dir: Path, name: str, value: str) -> None:
    (stack_dir / "secrets").mkdir(parents=True, exist_ok=True)
    (stack_dir / "secrets" / f"{name}_password").write_text(value + "\n")


def test_local_addresses_follow_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_KAFKA_PORT", "29092")
    monkeypatch.setenv("SPENDSTREAM_POSTGRES_PORT", "25432")
    monkeypatch.setenv("SPENDSTREAM_REDIS_PORT", "26380")
    s = Settings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:29092"
    assert s.postgres_dsn == "postgresql://spendstream:spendstream@127.0.0.1:25432/spendstream"
    assert s.redis_url == "redis://127.0.0.1:26380/0"


def test_a_stack_without_password_files_keeps_the_old_fixed_password(
    own_stack_dir: Path,
) -> None:
    s = Settings()
    assert s.postgres_dsn == "postgresql://spendstream:spendstream@127.0.0.1:15432/spendstream"
    assert s.redis_url == "redis://127.0.0.1:16380/0"
    assert credentials.missing(s) == ["postgres", "redis"]


def test_derived_addresses_carry_the_stack_password_files(own_stack_dir: Path) -> None:
    write_secret(own_stack_dir, "postgres", "pg-Secret_1")
    write_secret(own_stack_dir, "redis", "rd-Secret_2")
    s = Settings()
    assert s.postgres_dsn == "postgresql://spendstream:pg-Secret_1@127.0.0.1:15432/spendstream"
    assert s.redis_url == "redis://:rd-Secret_2@127.0.0.1:16380/0"
    assert "Secret" not in repr(s)
    # child processes get SPENDSTREAM_STACK_DIR and no password, and find the same files
    _, env = s.isolated("t-child")
    assert "pg-Secret_1" not in " ".join(env.values())
    assert Settings(stack_dir=Path(env["SPENDSTREAM_STACK_DIR"])).postgres_dsn == s.postgres_dsn


def test_given_passwords_and_addresses_win_over_the_files(
    own_stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_secret(own_stack_dir, "postgres", "from-file")
    write_secret(own_stack_dir, "redis", "from-file")
    monkeypatch.setenv("SPENDSTREAM_POSTGRES_PASSWORD", "p@ss/word")
    monkeypatch.setenv("SPENDSTREAM_REDIS_URL", "redis://cache.internal:6379/2")
    s = Settings()
    assert s.postgres_dsn == "postgresql://spendstream:p%40ss%2Fword@127.0.0.1:15432/spendstream"
    assert s.redis_url == "redis://cache.internal:6379/2"
    assert credentials.ensure(s) == []  # and an explicit address is never re-derived
    assert s.redis_url == "redis://cache.internal:6379/2"
    assert s.stack_secret("redis") == "from-file"


def test_ensure_generates_each_password_once_owner_only_and_updates_settings_in_place(
    own_stack_dir: Path,
) -> None:
    s = Settings()
    assert credentials.ensure(s) == ["postgres", "redis"]
    folder = own_stack_dir / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    values = {}
    for name in ("postgres", "redis"):
        path = folder / f"{name}_password"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        values[name] = path.read_text().strip()
    assert len(set(values.values())) == 2 and all(len(v) == 32 for v in values.values())
    assert (
        s.postgres_dsn
        == f"postgresql://spendstream:{values['postgres']}@127.0.0.1:15432/spendstream"
    )
    assert s.redis_url == f"redis://:{values['redis']}@127.0.0.1:16380/0"
    assert credentials.ensure(s) == []  # never replaced
    assert (folder / "postgres_password").read_text().strip() == values["postgres"]


def test_explicit_addresses_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("SPENDSTREAM_KAFKA_PORT", "29092")
    assert Settings().kafka_bootstrap_servers == "k1:9092,k2:9092"


def test_sasl_ssl_and_extra_config_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "broker:9093")
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv(
        "SPENDSTREAM_KAFKA_CLIENT_CONFIG", '{"client.id": "billing", "socket.timeout.ms": "5000"}'
    )
    s = Settings()
    conf = s.librdkafka(**{"acks": "all"})
    assert conf == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "sasl_plaintext",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "s3cret",
        "client.id": "billing",
        "socket.timeout.ms": "5000",
        "acks": "all",
    }
    kw = s.aiokafka()
    assert kw["sasl_plain_password"] == "s3cret" and kw["security_protocol"] == "SASL_PLAINTEXT"
    assert "s3cret" not in repr(s)


def test_bad_setting_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ValueError, match="kafka_security_protocol"):
        Settings()


@pytest.mark.parametrize(
    ("service", "hint"),
    [
        (Kafka, "apt-get install -y openjdk-17-jre-headless"),
        (Redis, "apt-get install -y redis-server"),
        (Prometheus, "apt-get install -y prometheus"),
    ],
)
def test_missing_prerequisite_names_the_install_command(
    service: type, hint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=hint):
        service(Settings()).check_prerequisites()


def test_a_sub_picodollar_budget_is_refused_at_startup_not_in_the_worker() -> None:
    with pytest.raises(ValidationError, match="whole number of picodollars"):
        Settings(_env_file=None, budgets={"team:x": {"hourly": "0.0000000000001"}})
    with pytest.raises(ValidationError, match="whole number of picodollars"):
        Settings(_env_file=None, alert_material_usd_per_day="0.0000000000001")
    ok = Settings(_env_file=None, budgets={"team:x": {"hourly": "0.000000000001"}})
    assert ok.budgets["team:x"]["hourly"] == Decimal("0.000000000001")
