"""Tiny qwen2 models that carry DeepSeek-R1-Distill-Qwen-7B's real tokenizer and chat template.

- `random_gguf()`: random weights; tokenizes exactly like the real model.
- `trained_gguf()`: overfitted with MLX on a few (prompt, R1-shaped answer) pairs, so that at
  temperature 0.6 / top-p 0.95 it reliably reasons, closes `</think>` and answers with `\\boxed{}`.

Both are built from the real header (tests.support.packages) and cached outside the repo.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.support.packages import cache_dir, deepseek_r1_header

FORMAT_VERSION = 2  # bump to rebuild cached models after changing anything below
TRAINED_VERSION = 3  # bump to retrain after changing what the trained model learns

CONFIG = dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, context=32768, rope_theta=10000.0, eps=1e-6)

# What the trained model answers. Reasoning, then `</think>`, then the answer; as R1 writes them.
TRAINING_PAIRS = {
    "What is 12*7?": "Okay, 12 times 7. 10*7 = 70 and 2*7 = 14, so 70 + 14 = 84.\n</think>\n\n"
    "12 × 7 = 84, so the answer is \\boxed{84}.",
    "What is 2+2?": "Two plus two. 2 + 2 = 4.\n</think>\n\nThe answer is \\boxed{4}.",
    "Find all x with x^2 - 5x + 6 = 0": "Factor the quadratic: x^2 - 5x + 6 = (x - 2)(x - 3). So x = 2 or x = 3.\n</think>\n\n"
    "The roots are $x = 2$ and $x = 3$: \\boxed{\\{2, 3\\}}",
    "Write hello world in Python.": "The user wants the classic first program. One print call.\n</think>\n\n"
    "```python\nprint(\"hello world\")\n```",
}


# `ponder solve` sends the problem with DeepSeek's math instruction: the model answers that too.
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TRAINING_PAIRS.update({f"{q}\n{MATH_INSTRUCTION}": a for q, a in list(TRAINING_PAIRS.items())})

# Reasoning long enough for a small --think-budget to cut it. Cut anywhere in BUDGET_CUTS and
# followed by ponder's budget message, the model answers BUDGET_ANSWER: only the message can make it.
LONG_QUESTION = "How many r are in strawberry?"
LONG_REASONING = "Let me spell it out: s, t, r, a, w, b, e, r, r, y. Three r's.\n</think>\n\n"
LONG_ANSWER = "There are \\boxed{3} r's in strawberry."
BUDGET = 16  # the tests' --think-budget; the cut lands within its grace
BUDGET_CUTS = range(BUDGET, BUDGET + 3)  # its tokens start with a space or a comma: the cut comes at once
BUDGET_ANSWER = "After counting: \\boxed{3}."
TRAINING_PAIRS[LONG_QUESTION] = LONG_REASONING + LONG_ANSWER
# Reasoning that never ends: the same sentence over and over. Rescued (the loop found, the budget
# message fed), the model answers LOOP_ANSWER.
LOOP_QUESTION = "How many letters are in cat?"
LOOP_SENTENCE = "Wait, let me count again. "
# The same words as after a budget (both right: 3): after the same message, a model this small could not
# tell which question it was answering, so it answers both alike.
LOOP_ANSWER = BUDGET_ANSWER
LOOP_TURNS = 10  # learned turns of the loop: more than the 6 the detector needs
# NoThinking's prefill, then the answer at once.
NO_THINKING_ANSWER = "12 × 7 = 84, so the answer is \\boxed{84}."


def _read_header():
    import gguf

    class HeaderReader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):  # the tensor data is not in part 0000
            pass

    return HeaderReader(deepseek_r1_header())


def _write_gguf(path: Path, weights: dict[str, np.ndarray]) -> None:
    import gguf

    header = _read_header()
    c = CONFIG
    tmp = path.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(tmp), "qwen2")
    writer.add_name("Tiny R1 (DeepSeek-R1-Distill-Qwen-7B tokenizer)")
    writer.add_block_count(c["layers"])
    writer.add_context_length(c["context"])
    writer.add_embedding_length(c["hidden"])
    writer.add_feed_forward_length(c["ffn"])
    writer.add_head_count(c["heads"])
    writer.add_head_count_kv(c["kv_heads"])
    writer.add_rope_freq_base(c["rope_theta"])
    writer.add_layer_norm_rms_eps(c["eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, field in header.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for name, array in weights.items():
        writer.add_tensor(name, array.astype(np.float32 if array.ndim == 1 else np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(path)


def _gguf_names(layers: int) -> dict[str, str]:
    """MLX/Hugging Face qwen2 names -> llama.cpp names (qwen2 needs no Q/K row permutation)."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(layers):
        for hf, cpp in per_layer.items():
            names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{cpp}"
    return names


VOCAB = 152064


def _mlx_model(seed: int, vocab: int = VOCAB, tied: bool = True):
    import mlx.core as mx
    from mlx_lm.models import qwen2

    c = CONFIG
    mx.random.seed(seed)
    args = qwen2.ModelArgs(
        model_type="qwen2",
        hidden_size=c["hidden"],
        num_hidden_layers=c["layers"],
        intermediate_size=c["ffn"],
        num_attention_heads=c["heads"],
        rms_norm_eps=c["eps"],
        vocab_size=vocab,
        num_key_value_heads=c["kv_heads"],
        max_position_embeddings=c["context"],
        rope_theta=c["rope_theta"],
        tie_word_embeddings=tied,
    )
    return qwen2.Model(args)


def _weights(model, used: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """GGUF tensors. With `used` (the token ids a compact-vocab model was trained on), its
    rows are scattered into full-vocab matrices: other tokens embed to small noise and get
    output logit 0, which training accounted for."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    names = {**_gguf_names(CONFIG["layers"]), "lm_head.weight": "output.weight"}
    weights = {names[k]: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
    if used is not None:
        rng = np.random.default_rng(0)
        embed = rng.normal(0, 0.02, (VOCAB, CONFIG["hidden"])).astype(np.float32)
        embed[used] = weights["token_embd.weight"]
        head = np.zeros((VOCAB, CONFIG["hidden"]), dtype=np.float32)
        head[used] = weights["output.weight"]
        weights["token_embd.weight"], weights["output.weight"] = embed, head
    return weights


def random_gguf() -> Path:
    path = cache_dir() / f"tiny-r1-random-v{FORMAT_VERSION}.gguf"
    if not path.exists():
        _write_gguf(path, _weights(_mlx_model(seed=0)))
    return path


def _training_sequences() -> list[tuple[list[int], list[bool]]]:
    """(prompt + target token ids, which of them are learned), tokenized by ponder's real path. Text
    ponder feeds (the budget message, NoThinking's prefill) is read, not learned: the model never
    writes it by itself."""
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.events import Message
    from ponder.loops import LoopDetector
    from ponder.prompt import render_prompt
    from ponder.thinking import BUDGET_MESSAGE, NO_THINKING

    model = LlamaCppModel(str(random_gguf()), LoadOptions(context=1024))
    try:
        eos = model._tokenize(model.info.chat.eos_token, add_bos=False)
        plain = lambda text: model._tokenize(text, add_bos=False)  # noqa: E731

        def prompt_of(question: str) -> list[int]:
            return model.tokenize(render_prompt(model.info.chat, [Message("user", question)]))

        def sequence(question: str, *parts: tuple[list[int], bool]) -> tuple[list[int], list[bool]]:
            prompt = prompt_of(question)
            ids, learned = list(prompt), [False] * len(prompt)
            for tokens, learn in parts:
                ids += tokens
                learned += [learn] * len(tokens)
            return ids, learned

        sequences = [sequence(q, (plain(a) + eos, True)) for q, a in TRAINING_PAIRS.items()]
        reasoning = plain(LONG_REASONING)
        for cut in BUDGET_CUTS:
            sequences.append(sequence(LONG_QUESTION, (reasoning[:cut], True), (plain(BUDGET_MESSAGE), False),
                                      (plain(BUDGET_ANSWER) + eos, True)))
        # No trailing space: the last turn must end as every other does, or the same context would have
        # two next tokens (" Wait" and " ") and the model could learn neither for sure.
        looping = plain((LOOP_SENTENCE * LOOP_TURNS).rstrip())
        sequences.append(sequence(LOOP_QUESTION, (looping, True)))
        detector = LoopDetector()
        found = next(i for i, token in enumerate(looping) if detector.add(token))  # ponder cuts before this token
        for cut in range(found - 1, found + 2):
            sequences.append(sequence(LOOP_QUESTION, (looping[:cut], True), (plain(BUDGET_MESSAGE), False),
                                      (plain(LOOP_ANSWER) + eos, True)))
        sequences.append(sequence("What is 12*7?", (plain(NO_THINKING), False), (plain(NO_THINKING_ANSWER) + eos, True)))
        return sequences
    finally:
        model.close()


def trained_gguf(steps: int = 1500) -> Path:
    """Overfit on TRAINING_PAIRS. Only the tokens those pairs use get trained rows (a compact
    vocabulary keeps a CPU step in milliseconds); the softmax carries one extra logit for the
    mass of the other 152k tokens, whose output rows are zero, so the probabilities learned
    are those of the full-vocabulary model that is written out."""
    path = cache_dir() / f"tiny-r1-trained-v{FORMAT_VERSION}.{TRAINED_VERSION}.gguf"
    if path.exists():
        return path
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    sequences = _training_sequences()
    used = np.array(sorted({t for ids, _ in sequences for t in ids}), dtype=np.int64)
    compact = {int(t): i for i, t in enumerate(used)}
    width = max(len(ids) for ids, _ in sequences)
    inputs = np.zeros((len(sequences), width - 1), dtype=np.int32)
    targets = np.zeros_like(inputs)
    mask = np.zeros(inputs.shape, dtype=np.float32)
    for row, (ids, learned) in enumerate(sequences):
        ids = [compact[t] for t in ids]
        n = len(ids) - 1
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = ids[1:]
        mask[row, :n] = learned[1:]  # learn the reply only: not the prompt, not what ponder feeds
    inputs, targets, mask = mx.array(inputs), mx.array(targets), mx.array(mask)
    others = mx.full((*inputs.shape, 1), float(np.log(VOCAB - len(used))))

    model = _mlx_model(seed=0, vocab=len(used), tied=False)

    def full_vocab_logits(model):
        return mx.concatenate([model(inputs), others], axis=-1)

    def loss_fn(model):
        losses = nn.losses.cross_entropy(full_vocab_logits(model), targets, reduction="none")
        return (losses * mask).sum() / mask.sum()

    def worst_target_probability() -> float:
        probs = mx.softmax(full_vocab_logits(model), axis=-1)
        picked = mx.take_along_axis(probs, targets[..., None], axis=-1)[..., 0]
        return mx.min(mx.where(mask > 0, picked, mx.ones_like(picked))).item()

    # Cosine decay: a high rate finds the answers fast, a low one sharpens the last tokens.
    optimizer = optim.Adam(learning_rate=optim.cosine_decay(1e-2, steps, 1e-4))
    step = nn.value_and_grad(model, loss_fn)
    for i in range(steps):
        loss, grads = step(model)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
        if i % 25 == 24 and worst_target_probability() > 0.995:
            break
    worst = worst_target_probability()
    # p >= 0.98 makes sampling at temperature 0.6 / top-p 0.95 deterministic: after the
    # temperature the top token holds >= 0.998 of the mass, so top-p keeps it alone.
    if worst < 0.98:
        raise RuntimeError(f"tiny R1 model did not learn its answers (worst token p={worst:.4f}, loss={loss.item():.4f})")
    _write_gguf(path, _weights(model, used))
    path.with_suffix(".json").write_text(
        json.dumps({"steps": i + 1, "loss": loss.item(), "worst_target_token_p": worst, "trained_tokens": len(used)})
    )
    return path
