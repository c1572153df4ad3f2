"""A tiny but real Mistral checkpoint for tests and local mode; nothing is downloaded.

`write_tiny_mistral` writes a Hugging Face checkpoint (`config.json` + `model.safetensors`,
`MistralConfig`, seeded random weights) whose vocabulary is the real v3 tokenizer shipped in the
`mistral-common` wheel; that tokenizer file is copied beside the weights as `tokenizer.model.v3`,
where `models.loading.find_tokenizer` (and vLLM's `tokenizer_mode="mistral"`) look for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILENAME = "tokenizer.model.v3"
_BUNDLED_V3 = "mistral_instruct_tokenizer_240323.model.v3"
TINY_MARKER = "tramontane_tiny.json"


def bundled_v3_tokenizer() -> Path:
    """Path of the v3 SentencePiece tokenizer inside the installed `mistral-common` wheel."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / _BUNDLED_V3
    if not path.is_file():
        raise FileNotFoundError(
            f"mistral-common {getattr(mistral_common, '__version__', '?')} does not ship "
            f"{_BUNDLED_V3}; install mistral-common[sentencepiece]>=1.5"
        )
    return path


def write_tiny_mistral(
    path: Path, *, num_layers: int = 2, hidden_size: int = 64, seed: int = 0
) -> Path:
    """Write a tiny seeded Mistral checkpoint into `path` (created if needed); return `path`.

    Same arguments give byte-identical weights. Heads: 4 query heads and 2 key/value heads
    (grouped-query attention, as in the real models), so `hidden_size` must divide by 4.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if hidden_size < 8 or hidden_size % 4:
        raise ValueError(f"hidden_size must be a multiple of 4 and >= 8, got {hidden_size}")
    import torch
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from transformers import MistralConfig, MistralForCausalLM

    tok_file = bundled_v3_tokenizer()
    raw = MistralTokenizer.from_file(str(tok_file)).instruct_tokenizer.tokenizer
    config = MistralConfig(
        vocab_size=raw.n_words,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=2048,
        sliding_window=None,
        bos_token_id=raw.bos_id,
        eos_token_id=raw.eos_id,
        pad_token_id=None,
        tie_word_embeddings=False,
        initializer_range=0.05,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = MistralForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # explicit init: independent of transformers' init order
        for _, param in sorted(model.named_parameters()):
            if param.dim() == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, config.initializer_range, generator=generator)
    model.save_pretrained(path, safe_serialization=True)
    shutil.copyfile(tok_file, path / TOKENIZER_FILENAME)
    (path / TINY_MARKER).write_text(
        json.dumps({"num_layers": num_layers, "hidden_size": hidden_size, "seed": seed}) + "\n"
    )
    return path


def write_tiny_lora(base_dir: Path, path: Path, *, rank: int = 8, seed: int = 1) -> Path:
    """Write a peft LoRA adapter for the checkpoint at `base_dir`, with seeded random weights.

    Both LoRA matrices are random (peft initialises B to zero, which would make the adapter a
    no-op), so routing a request to this adapter visibly changes the output.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import MistralForCausalLM

    base = MistralForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.normal_(0.0, 0.5, generator=generator)
    path = Path(path)
    model.save_pretrained(str(path))
    return path
