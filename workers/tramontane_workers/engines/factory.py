"""Engine choice from the serving contract: `EngineConfig` -> a ready `Engine` + `ChatCodec`."""

from __future__ import annotations

from pathlib import Path

from tramontane_workers.chat.encode import ChatCodec
from tramontane_workers.contract.serve_config import EngineConfig
from tramontane_workers.engines.base import Engine
from tramontane_workers.errors import EngineUnavailable
from tramontane_workers.models.loading import detect_format, find_tokenizer, materialize

DEFAULT_MAX_BATCH_SIZE = 8


def build_engine(
    config: EngineConfig, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> tuple[Engine, ChatCodec]:
    """Materialise the model named by `config` and start the chosen engine on it."""
    model_dir = materialize(config.model_uri)
    detected = detect_format(model_dir)
    if config.format != "auto" and config.format != detected:
        raise EngineUnavailable(
            f"format: the spec says {config.format!r} but {model_dir} holds a {detected!r} "
            "checkpoint"
        )
    engine: Engine
    if config.engine == "vllm":
        from tramontane_workers.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(
            model_dir=model_dir,
            checkpoint_format=detected,
            served_model_name=config.served_model_name,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            tensor_parallel_size=config.tensor_parallel_size,
            max_loras=config.max_adapters_per_replica,
        )
    else:
        from tramontane_workers.engines.reference import TransformersEngine

        engine = TransformersEngine(
            model_dir,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            max_batch_size=max_batch_size,
        )
    codec = ChatCodec(find_tokenizer(model_dir), max_model_len=engine.max_model_len)
    return engine, codec


def resolve_adapter_dir(uri: str) -> Path:
    """Local directory of an adapter URI (same schemes as models)."""
    return materialize(uri)
