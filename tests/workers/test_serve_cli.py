"""`tramontane serve`: arguments -> the same ServeAppConfig the operator would render."""

from __future__ import annotations

import pytest

from tramontane_cli.commands.serve import local_config
from tramontane_cli.main import build_parser


def test_serve_arguments_build_the_app_config() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--model-uri",
            "file:///models/tiny",
            "--name",
            "demo",
            "--adapter",
            "legal=file:///adapters/legal",
            "--max-adapters",
            "2",
            "--num-cpus",
            "2",
        ]
    )
    config = local_config(args, args.model_uri)
    assert config.route_prefix == "/demo"
    assert config.engine.served_model_name == "demo"
    assert [(a.name, a.uri) for a in config.engine.adapters] == [
        ("legal", "file:///adapters/legal")
    ]
    assert config.engine.max_adapters_per_replica == 2
    assert config.resources.num_cpus == 2.0


def test_serve_rejects_adapter_without_uri() -> None:
    args = build_parser().parse_args(["serve", "--model-uri", "file:///m", "--adapter", "legal"])
    with pytest.raises(ValueError, match="NAME=URI"):
        local_config(args, args.model_uri)


def test_serve_needs_a_model() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])
