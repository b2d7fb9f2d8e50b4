"""The policy / implicit-PRM language model: tokenizer, model builders, chat format, token log-probs.

What this file gives the rest of istar:
* ``build_tokenizer`` trains a small byte-level BPE on env text (no download), with the special
  tokens of a tiny chat format and an env's copyable names (WebShop's product IDs) as whole tokens;
  ``build_default_model`` builds a Llama of a few million parameters from a ``transformers`` config.
  ``load_model`` / ``save_model`` handle any local Hugging Face causal-LM directory, so a real
  checkpoint (e.g. Qwen2.5-7B-Instruct, the paper's base) drops in.
* The chat format lives here and only here: ``format_prompt`` (system + first observation),
  ``format_observation`` (close the assistant turn, next observation, open the assistant turn) and
  ``encode_action``. A tokenizer with a chat template is used through that template; ours uses

      <|system|>{system}<|end|><|user|>{obs 1}<|end|><|assistant|>{action 1}<|end|><|user|>{obs 2}...

* ``token_logprobs``: log π(y_k | y_<k) of every action token, the quantity behind the implicit
  step reward of paper Eq. 1 (paper.md E1: r_φ = β Σ_k [log π_φ(y_k|·) − log π_θold(y_k|·)]) and
  the PPO ratio of paper Eq. 6 (paper.md E8). It computes the vocabulary log-softmax in fp32 only at
  action positions, chunked over rows (longest first; the prefix every row of a chunk shares, the
  system prompt, runs once), and returns them packed (row-major over ``action_mask``).
* ``clone_model``: the implicit PRM π_φ starts as a copy of the policy (paper.md E3);
  ``disable_dropout`` makes a loaded model's forwards deterministic, as RL's ratios need.

Shapes: R rows, L padded row length, T action tokens (= action_mask.sum()), H hidden, V vocab.

References:
  1) iStar, Liu et al. 2025, https://arxiv.org/abs/2509.19199 (paper.md E1, E3, E8)
  2) Hugging Face tokenizers BPE trainer, https://huggingface.co/docs/tokenizers/api/trainers
  3) Chunked/gathered log-prob computation as in verl's ``logprobs_from_logits`` and
     Liger's fused linear cross entropy: never materialise (R, L, V) fp32 logits.

Deviations from the paper:
  1) The paper fine-tunes Qwen2.5-(VL)-7B-Instruct; our default is a from-scratch Llama of a few
     million parameters so the whole pipeline runs on CPU. Any local HF causal LM loads instead.
  2) Sokoban observations are text, not images (paper.md "Environments as used").
  3) The default tokenizer holds each WebShop product ID as one token (``build_tokenizer``'s
     ``words``); Qwen's tokenizer splits an ID into pieces, which a 7B model copies from its context
     and our 4-layer model did not learn to (docs/results.md, WebShop).
"""
from __future__ import annotations

import copy
import inspect
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# The tiny chat format. Role markers are special (skipped when decoding an action to text);
# the action/think tags are ordinary added tokens, so they survive decoding and the env sees them.
PAD, EOS, END = "<|pad|>", "<|eos|>", "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
TAG_TOKENS = ["<action>", "</action>", "<think>", "</think>"]
SPECIAL_TOKENS = [PAD, EOS, END, *ROLE_TOKENS.values()]

# A placeholder assistant message used to cut a chat template into incremental pieces.
_PLACEHOLDER = "\u2063ISTAR_PLACEHOLDER\u2063"


# -- tokenizer ----------------------------------------------------------------------------------
def build_tokenizer(texts: list[str], vocab_size: int = 1024, words: list[str] | tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (system prompts, observations, expert actions).

    Byte-level means every string is encodable (no unknown token), so any model output can be
    decoded and re-encoded. The trainer stops early when the texts offer fewer merges.

    ``words`` become single tokens on top of the ``vocab_size`` BPE tokens: strings an agent copies
    verbatim from an observation into an action (an env's ``tokenizer_words``, e.g. WebShop's product
    IDs). BPE splits a random ID into pieces that differ with what stands before it (" B0X" after a
    space, "[B0X" in an action), so copying it takes a chain of induction steps a small model does not
    learn in a short warm start; one token is copied by one attention head. They are cut out of
    ``texts`` before training, so no BPE merge is spent on them.
    """
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise TypeError("build_tokenizer(texts=...): expected a list of strings")
    if vocab_size < 256 + len(SPECIAL_TOKENS) + len(TAG_TOKENS):
        raise ValueError(f"build_tokenizer(vocab_size={vocab_size}): need at least 256 bytes + special tokens")
    bad = [w for w in words if not isinstance(w, str) or not w or w != w.strip() or " " in w] \
        if isinstance(words, (list, tuple)) else [words]
    if bad:
        raise ValueError(f"build_tokenizer(words=...): expected a list of non-empty strings without spaces, got {bad[:3]!r}")
    words = list(dict.fromkeys(words))  # unique, in order
    if words:  # longest first, so a word that is a prefix of another never cuts it
        cut = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))
        texts = [cut.sub(" ", t) for t in texts]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAG_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS + words])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS,
        extra_special_tokens={"end_token": END, **{f"{r}_token": t for r, t in ROLE_TOKENS.items()}},
    )


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """``_encode`` of every text in one tokenizer call: a fast tokenizer encodes the batch in Rust, on
    all cores (a rollout encodes one observation per live episode at every env step)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def decode_actions(tokenizer, seqs: list[list[int]]) -> list[str]:
    """``tokenizer.batch_decode(seqs, skip_special_tokens=True)``; a fast tokenizer without the clean-up
    step decodes through its Rust backend in one call (the Python wrapper converts and checks every id)."""
    if getattr(tokenizer, "is_fast", False) and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer.backend_tokenizer.decode_batch([list(x) for x in seqs], skip_special_tokens=True)
    return tokenizer.batch_decode(seqs, skip_special_tokens=True)


def _tiny_id(tokenizer, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no chat template and no {token!r} token; build it with build_tokenizer")
    return int(tid)


def format_turn(tokenizer, role: str, text: str) -> list[int]:
    """One complete turn of the tiny format: ``<|role|>text<|end|>`` (no chat template path)."""
    if role not in ROLE_TOKENS:
        raise ValueError(f"format_turn(role={role!r}): expected one of {sorted(ROLE_TOKENS)}")
    return _turn(tokenizer, role, _encode(tokenizer, text))


def _turn(tokenizer, role: str, ids: list[int]) -> list[int]:
    return [_tiny_id(tokenizer, ROLE_TOKENS[role]), *ids, _tiny_id(tokenizer, END)]


def _template(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def format_prompt(tokenizer, system: str, observation: str) -> list[int]:
    """Context before the first action: [system turn][user turn: first observation][assistant prefix]."""
    return format_prompts(tokenizer, [system], [observation])[0]


def format_prompts(tokenizer, systems: list[str], observations: list[str]) -> list[list[int]]:
    """``format_prompt`` of every (system, observation) pair, encoded in one tokenizer call."""
    if len(systems) != len(observations):
        raise ValueError(f"format_prompts: {len(systems)} system prompts for {len(observations)} observations")
    if has_chat_template(tokenizer):
        texts = [_template(tokenizer, ([{"role": "system", "content": s}] if s else []) + [{"role": "user", "content": o}], True)
                 for s, o in zip(systems, observations)]
        return _encode_many(tokenizer, texts)
    ids = _encode_many(tokenizer, list(systems) + list(observations))
    sys_ids, obs_ids = ids[:len(systems)], ids[len(systems):]
    asst = _tiny_id(tokenizer, ROLE_TOKENS["assistant"])
    return [(_turn(tokenizer, "system", si) if s else []) + _turn(tokenizer, "user", oi) + [asst]
            for s, si, oi in zip(systems, sys_ids, obs_ids)]


def format_observation(tokenizer, observation: str) -> list[int]:
    """Context between two actions: [end of assistant turn][user turn: observation][assistant prefix].

    With a chat template the piece is the text the template puts after an assistant message,
    found by rendering a conversation whose assistant message is a placeholder.
    """
    return format_observations(tokenizer, [observation])[0]


def format_observations(tokenizer, observations: list[str]) -> list[list[int]]:
    """``format_observation`` of every observation, encoded in one tokenizer call."""
    if has_chat_template(tokenizer):
        texts = []
        for obs in observations:
            msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _PLACEHOLDER},
                    {"role": "user", "content": obs}]
            text = _template(tokenizer, msgs, True)
            if _PLACEHOLDER not in text:
                raise ValueError("the tokenizer's chat template drops assistant messages; cannot split it into turns")
            texts.append(text.split(_PLACEHOLDER, 1)[1])
        return _encode_many(tokenizer, texts)
    end, asst = _tiny_id(tokenizer, END), _tiny_id(tokenizer, ROLE_TOKENS["assistant"])
    return [[end, *_turn(tokenizer, "user", ids), asst] for ids in _encode_many(tokenizer, list(observations))]


def encode_action(tokenizer, text: str) -> list[int]:
    """Token ids of an action as the model would write it (used for warm-start demonstrations)."""
    return _encode(tokenizer, text)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Ids that end an action when generated: EOS, our ``<|end|>``, and the model's own EOS ids."""
    ids = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids(END)
    if end is not None and end != tokenizer.unk_token_id:
        ids.add(end)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    return sorted(int(i) for i in ids if i is not None)


# -- model --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a from-scratch Llama (the default policy / PRM backbone)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 2048


MODEL_SIZES = {
    "small": ModelConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688),  # 3.25 M params at vocab 1024
    "tiny": ModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=1024),
}


def build_default_model(tokenizer, size: str = "small", seed: int | None = None) -> LlamaForCausalLM:
    """A randomly initialised Llama sized by ``MODEL_SIZES[size]``; nothing is downloaded."""
    if size not in MODEL_SIZES:
        raise ValueError(f"build_default_model(size={size!r}): expected one of {sorted(MODEL_SIZES)}")
    c = MODEL_SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    if seed is not None:
        torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    return model


def load_model(path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) from a local Hugging Face directory; never touches the network."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_model(path={path!r}): not a directory")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:  # many chat checkpoints ship without a pad token
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device)
    return model, tokenizer


def save_model(model, tokenizer, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def disable_dropout(model):
    """Set every dropout rate of ``model`` to 0, in place; returns the model. RL compares forwards of the
    same tokens: log π_θold recomputed against the sampling log-probs, the PRM's scoring pass against its
    gradient pass (``istar.update_prm`` needs the same Q twice), π_θ against π_θold in the PPO ratio
    (E8, which must be 1 before the first step). Dropout breaks all three, so it is off in the policy,
    the PRM and the reference, as TRL's ``disable_dropout_in_model`` does. It covers torch's dropout
    modules and the float rates Hugging Face attention modules keep as attributes (Llama's and Qwen2's
    ``attention_dropout``); the config is left as saved. Our default model has none."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    return model


def clone_model(model):
    """An independent copy (same weights, own parameters): the PRM π_φ initialised from the policy."""
    return copy.deepcopy(model)


# -- log-probs ----------------------------------------------------------------------------------
def _final_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    head = model.get_output_embeddings()
    with torch.autocast(hidden.device.type, enabled=False):  # the T gathered rows only: cheap in fp32,
        # and E1 sums differences of two models' log-probs, which bf16 rounding would drown
        logits = F.linear(hidden.float(), head.weight.float(), None if head.bias is None else head.bias.float())  # (t, V)
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-style soft cap, if any
    return torch.tanh(logits / cap) * cap if cap else logits


_MIN_SHARED_PREFIX = 16  # shorter common prefixes run in the plain forward (not worth a second call)


def shared_prefix_len(input_ids: torch.Tensor, attention_mask: torch.Tensor, action_mask: torch.Tensor) -> int:
    """P: columns [0, P) hold the same real tokens in every row, and no hidden state a prediction
    needs lies among them (every action token is at column ≥ P + 1). 0 for a single row."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # (L,)
    p = int(same.long().cumprod(0).sum())  # the leading run of shared columns
    cols = action_mask.any(0).nonzero()  # (k, 1) columns holding an action token in some row
    return max(0, min(p, int(cols[0, 0]) - 1)) if len(cols) else p


def _prefix_shared_forward(decoder, ids, am, pos, p: int) -> torch.Tensor | None:
    """Hidden states of columns [p, L) (r, L-p, H): the shared prefix [0, p) runs once (one row), its
    cache is repeated for the r rows, the rest runs on top. None when the model's cache cannot be
    repeated per row (the caller then runs the plain forward)."""
    out = decoder(input_ids=ids[:1, :p], position_ids=pos[:1, :p], use_cache=True)
    cache = out["cache"] if "cache" in out else out.get("past_key_values")  # renamed in transformers 5.2x
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(ids.shape[0])  # (1, ...) -> (r, ...) per layer; autograd sums it back
    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    return decoder(input_ids=ids[:, p:], attention_mask=am, position_ids=pos[:, p:], use_cache=True,
                   **{name: cache}).last_hidden_state  # (r, L-p, H)


# Rows per forward in token_logprobs. On a CPU, compute-bound: small chunks bound the memory at no
# cost. On a GPU the small default model is launch-bound: a chunk of 16 windowed Sokoban rows
# (~6k tokens) is a few microseconds of arithmetic behind ~100 kernel launches, so chunks hold
# more rows; the caller's micro-batch (--micro-batch-tokens) still bounds a chunk's memory.
CHUNK_ROWS = {"cpu": 16, "cuda": 128}


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, action_mask: torch.Tensor,
                   chunk_rows: int | None = None, with_entropy: bool = False, share_prefix: bool = True):
    """log π(y_p | y_<p) for every position p with ``action_mask[r, p]``, packed row-major: (T,).

    Position p is predicted by the hidden state at p-1, so ``action_mask[:, 0]`` must be False.
    Only the T gathered hidden states go through ``lm_head`` and the fp32 log-softmax: memory is
    O(chunk tokens · V), not O(R · L · V). Rows may be left- or right-padded: position ids come
    from the attention mask. Rows run ``chunk_rows`` at a time (default ``CHUNK_ROWS`` of the device),
    longest first, each chunk cut after its last action token, so a chunk pads to its own longest row,
    not the batch's. Gradients flow. With ``with_entropy`` also returns the entropy
    H = −Σ_v π_v log π_v of the same T next-token distributions (T,).

    With ``share_prefix`` the columns that every row of a chunk holds identically before its first
    prediction (the system prompt; ~45% of a windowed Sokoban row) run once: one forward of that
    prefix, its KV cache repeated for the rows, then the rest of each row on top of it. Values and
    gradients are those of the plain forward (tested); a model whose cache cannot be repeated per
    row runs the plain forward.
    """
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape or input_ids.shape != action_mask.shape:
        raise ValueError(f"token_logprobs: input_ids, attention_mask, action_mask must all be (R, L); got "
                         f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(action_mask.shape)}")
    action_mask = action_mask.bool()
    if action_mask[:, 0].any():
        raise ValueError("token_logprobs: action_mask[:, 0] must be False (the first token has no prediction)")
    if chunk_rows is None:
        chunk_rows = CHUNK_ROWS.get(input_ids.device.type, CHUNK_ROWS["cuda"])
    if chunk_rows < 1:
        raise ValueError(f"token_logprobs(chunk_rows={chunk_rows}): expected >= 1")
    decoder = model.get_decoder()
    R, L = action_mask.shape
    # Rows run in chunks of similar length, each cut after its last action token (later columns
    # change no earlier hidden state); rows without action tokens do not run at all.
    counts = action_mask.sum(1)  # (R,) action tokens per row
    end = torch.where(counts > 0, L - action_mask.flip(1).int().argmax(1), 0)  # (R,) last action column + 1
    order = torch.argsort(end, descending=True, stable=True)[:int((counts > 0).sum())]  # (R',) rows to run
    ends = end[order].tolist()
    logps, ents = [], []
    for s in range(0, len(ends), chunk_rows):
        rows, width = order[s:s + chunk_rows], ends[s]  # (r,), the longest of the chunk
        ids, am, act = input_ids[rows, :width], attention_mask[rows, :width], action_mask[rows, :width]
        pos = (am.long().cumsum(-1) - 1).clamp(min=0)  # (r, w) padding-agnostic positions
        p = shared_prefix_len(ids, am, act) if share_prefix else 0
        hidden = _prefix_shared_forward(decoder, ids, am, pos, p) if p >= _MIN_SHARED_PREFIX else None
        if hidden is None:
            p, hidden = 0, decoder(input_ids=ids, attention_mask=am, position_ids=pos).last_hidden_state  # (r, w, H)
        pred = act[:, p + 1:]  # (r, w-p-1) True where column c+1 is an action token (none before p+1)
        logits = _final_logits(model, hidden[:, :-1][pred])  # (t, V) only at the asked positions
        logp_all = F.log_softmax(logits, dim=-1)  # (t, V) fp32
        logps.append(logp_all.gather(-1, ids[:, p + 1:][pred].unsqueeze(-1)).squeeze(-1))  # (t,)
        if with_entropy:
            ents.append(-(logp_all.exp() * logp_all).sum(-1))  # (t,)
    device = input_ids.device
    # back to row-major packed order: the k-th token computed is token `within` of row `order[...]`
    run_counts = counts[order]  # (R',)
    num = int(run_counts.sum())
    within = torch.arange(num, device=device) - torch.repeat_interleave(run_counts.cumsum(0) - run_counts, run_counts)
    dest = (counts.cumsum(0) - counts)[torch.repeat_interleave(order, run_counts)] + within  # (T,) packed index
    back = torch.empty_like(dest)
    back[dest] = torch.arange(num, device=device)  # (T,) inverse permutation
    logp = torch.cat(logps)[back] if logps else torch.zeros(0, device=device)  # (T,)
    if with_entropy:
        return logp, (torch.cat(ents)[back] if ents else torch.zeros(0, device=device))
    return logp
