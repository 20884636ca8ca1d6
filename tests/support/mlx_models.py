"""MLX model directories converted from the test GGUFs, in the mlx-community layout.

config.json + model.safetensors + tokenizer.json + tokenizer_config.json, which is what
`mlx_lm.load` reads. The tokenizer is rebuilt from the GGUF's vocab and merges, so both
backends tokenize alike; the weights are dequantized with the gguf package, and llama
models get llama.cpp's Q/K row permutation undone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tests.support.packages import cache_dir

FORMAT_VERSION = 3  # bump to rebuild cached directories after changing anything below

# Pre-tokenizers as the Hugging Face tokenizer.json files of these models declare them,
# keyed by llama.cpp's `tokenizer.ggml.pre`.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "deepseek-r1-qwen": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ],
    },
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    },
}
NORMALIZERS = {"deepseek-r1-qwen": {"type": "NFC"}, "smollm": None}

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # llama.cpp token types

# Hugging Face parameter names for llama.cpp's, per layer.
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return field.contents() if field is not None else default


def tokenizer_files(reader) -> tuple[dict, dict]:
    """tokenizer.json and tokenizer_config.json for a GGUF's BPE ("gpt2") tokenizer."""
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("only BPE (gpt2-style) GGUF tokenizers are converted")
    pre = _field(reader, "tokenizer.ggml.pre")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    # Special tokens go in the BPE vocabulary too (merges never produce them), as in
    # SmolLM2's own tokenizer.json; without them transformers renumbers some added tokens.
    vocab = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (NORMAL, CONTROL, USER_DEFINED)}
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": kind == CONTROL}
        for i, (t, kind) in enumerate(zip(tokens, types))
        if kind in (CONTROL, USER_DEFINED)
    ]
    bos_id = _field(reader, "tokenizer.ggml.bos_token_id")
    bos = tokens[bos_id]
    eos = tokens[_field(reader, "tokenizer.ggml.eos_token_id")]
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
    post = (
        {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }
        if add_bos
        else None
    )
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": NORMALIZERS[pre],
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": [list(m) for m in merges],
        },
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "add_bos_token": add_bos,
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "model_max_length": 131072,
    }
    return tokenizer, config


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row interleaving of Q and K (convert_hf_to_gguf's permute)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def model_config(reader) -> dict:
    arch = _field(reader, "general.architecture")
    get = lambda key, default=None: _field(reader, f"{arch}.{key}", default)  # noqa: E731
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    return {
        "model_type": arch,
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]],
        "hidden_size": get("embedding_length"),
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": get("attention.head_count"),
        "num_key_value_heads": get("attention.head_count_kv"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "max_position_embeddings": get("context_length"),
        "vocab_size": len(_field(reader, "tokenizer.ggml.tokens")),
        "tie_word_embeddings": not has_output,
        "torch_dtype": "float32",
    }


def weights(reader, config: dict) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    out = {}
    for tensor in reader.tensors:
        array = dequantize(tensor.data, tensor.tensor_type).reshape([int(n) for n in reversed(tensor.shape)])
        block, _, rest = tensor.name.partition(".")[2].partition(".")
        if tensor.name.startswith("blk."):
            name = f"model.layers.{block}.{LAYER_NAMES[rest]}"
        else:
            name = names[tensor.name]
        if config["model_type"] == "llama" and rest == "attn_q.weight":
            array = _unpermute(array, config["num_attention_heads"])
        elif config["model_type"] == "llama" and rest == "attn_k.weight":
            array = _unpermute(array, config["num_key_value_heads"])
        out[name] = array.astype(np.float32)  # MLX on CPU runs float32 2-3x faster than float16
    return out


def gguf_to_mlx(gguf_path: Path, target: Path) -> Path:
    """Write an MLX model directory for a GGUF (built beside `target`, then renamed into place)."""
    import gguf
    import mlx.core as mx

    reader = gguf.GGUFReader(str(gguf_path))
    config = model_config(reader)
    tokenizer, tokenizer_config = tokenizer_files(reader)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    (partial / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (partial / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False, indent=2))
    mx.save_safetensors(str(partial / "model.safetensors"), {k: mx.array(v) for k, v in weights(reader, config).items()},
                        metadata={"format": "mlx"})
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def mlx_dir(gguf_path: Path, bits: int | None = None) -> Path:
    """The cached MLX directory for a GGUF; with `bits`, quantized by mlx_lm's own converter
    (the way the mlx-community 4-bit and 8-bit directories are made)."""
    full = cache_dir() / "mlx" / f"{gguf_path.stem}-v{FORMAT_VERSION}"
    if not (full / "model.safetensors").exists():
        gguf_to_mlx(gguf_path, full)
    if bits is None:
        return full
    target = full.with_name(f"{full.name}-{bits}bit")
    if not (target / "config.json").exists():
        import mlx_lm

        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        mlx_lm.convert(str(full), str(partial), quantize=True, q_bits=bits, q_group_size=64)
        partial.rename(target)
    return target
