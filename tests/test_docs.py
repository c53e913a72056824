"""README and docker-compose stay in step with the code they document."""

from __future__ import annotations

import json
import re
from pathlib import Path

from spendstream.config import Settings
from spendstream.events import LLMCallEvent, example_event
from spendstream.stack.services import Kafka

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    block = README.split("```sh", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `SPENDSTREAM_([A-Z0-9_]+)` \|", README, re.M))
    fields = {name.upper() for name in Settings.model_fields}
    assert documented == fields


def test_readme_wire_example_is_the_schema_example() -> None:
    block = README.split("One full example:", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert LLMCallEvent.model_validate_json(block) == example_event()
    assert json.loads(block) == json.loads(example_event().to_json())


def test_compose_uses_the_same_ports_and_kafka_version() -> None:
    compose = (ROOT / "infra" / "docker-compose.yml").read_text()
    s = Settings()
    for port in (s.kafka_port, s.postgres_port, s.redis_port, s.prometheus_port):
        assert f'"127.0.0.1:{port}:' in compose
    assert f"image: apache/kafka:{Kafka(s).version}" in compose
    assert f"Apache Kafka {Kafka(s).version}" in README
