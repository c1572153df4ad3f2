"""The inference proto: committed stubs match the .proto, and the contract imports standalone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tramontane_workers.contract import inference_pb2, protogen


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    for fresh in protogen.generate(tmp_path):
        committed = protogen.CONTRACT_DIR / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} drifted from inference.proto; run "
            "`python -m tramontane_workers.contract.protogen` and commit the result"
        )


def test_service_shape() -> None:
    service = inference_pb2.DESCRIPTOR.services_by_name["Inference"]
    assert inference_pb2.DESCRIPTOR.package == "tramontane.v1"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Chat", "ChatStream", "ListModels", "GetStats"}
    assert methods["ChatStream"].server_streaming
    assert not methods["Chat"].server_streaming


def test_request_mirrors_mistral_chat_completion() -> None:
    fields = set(inference_pb2.ChatRequest.DESCRIPTOR.fields_by_name)
    assert fields == {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "random_seed",
        "tools",
        "tool_choice",
        "response_format",
        "safe_prompt",
    }
    request = inference_pb2.ChatRequest(model="m", temperature=0.0)
    assert request.HasField("temperature") and not request.HasField("top_p")
