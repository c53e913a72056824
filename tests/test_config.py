"""Settings: env prefix, local addresses that follow the ports, security passthrough."""

from __future__ import annotations

import pytest

from spendstream.config import Settings
from spendstream.stack.process import StackError
from spendstream.stack.services import Kafka, Prometheus, Redis


def test_local_addresses_follow_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_KAFKA_PORT", "29092")
    monkeypatch.setenv("SPENDSTREAM_POSTGRES_PORT", "25432")
    monkeypatch.setenv("SPENDSTREAM_REDIS_PORT", "26380")
    s = Settings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:29092"
    assert s.postgres_dsn == "postgresql://spendstream:spendstream@127.0.0.1:25432/spendstream"
    assert s.redis_url == "redis://127.0.0.1:26380/0"


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
