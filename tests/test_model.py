"""model.py: tokenizer, chat format, builders, save/load, and token_logprobs against a full log-softmax."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from model import (MODEL_SIZES, TAG_TOKENS, build_default_model, build_tokenizer, clone_model, decode_actions,
                   disable_dropout, encode_action, format_observation, format_observations, format_prompt, format_prompts, format_turn,
                   load_model, save_model, shared_prefix_len, token_logprobs)

TEXTS = ["You are a helpful agent. Answer with <action>...</action>.", "Say 12.", "Say 7.",
         "<think>the number is 12</think><action>12</action>", "Room:\n#__O#\n#P_X#\n"] * 4
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(TEXTS, vocab_size=320)


@pytest.fixture(scope="module")
def tiny(tok):
    return build_default_model(tok, "tiny", seed=0).eval()


@settings(deadline=None, max_examples=40)
@given(text=st.text(max_size=40))
@example(text="<action>up</action>√ é\n\t")
def test_tokenizer_round_trips_any_text(tok, text):
    # byte-level: every string encodes, and decodes back exactly (model output is never unencodable)
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_tags_are_single_tokens_and_survive_decoding(tok):
    for tag in TAG_TOKENS:
        assert len(encode_action(tok, tag)) == 1, tag
    ids = encode_action(tok, "<action>12</action>") + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "<action>12</action>"


WORDS = ["B0XPLLQ9TY", "B0RYLF9DYK", "B0X", "Q7"]  # "B0X" is a prefix of a word; "Q7" sits inside one


WORD_TEXTS = TEXTS + [f"[SEP] {w}: a product [SEP] click[{w}]" for w in WORDS]


@pytest.fixture(scope="module")
def word_tok():
    return build_tokenizer(WORD_TEXTS, vocab_size=320, words=WORDS)


@settings(deadline=None, max_examples=60)
@given(word=st.sampled_from(WORDS), before=st.text(max_size=6), after=st.sampled_from(["", "]", ": ", " x", "</action>", "\n"]))
def test_words_are_single_tokens_in_any_context(word_tok, word, before, after):
    # an env's copyable names (WebShop's product IDs) encode as one token wherever they stand, the same
    # token in an observation (" B0..:") as in an action ("[B0..]"), and every text still round-trips
    text = before + word + after
    ids = word_tok.encode(text, add_special_tokens=False)
    if not any(w in text.replace(word, " ", 1) for w in WORDS if w != word):  # no other word overlaps it
        assert word_tok.convert_tokens_to_ids(word) in ids, word_tok.convert_ids_to_tokens(ids)
    assert word_tok.decode(ids) == text


def test_words_add_to_the_bpe_vocabulary_and_reject_bad_input(tok, word_tok):
    plain = build_tokenizer(WORD_TEXTS, vocab_size=320)
    assert len(word_tok) == len(plain) + len(WORDS)  # the BPE part keeps its size; each word is one more token
    pieces = word_tok.convert_ids_to_tokens(encode_action(word_tok, "<action>click[B0RYLF9DYK]</action>"))
    assert pieces.count("B0RYLF9DYK") == 1 and pieces[-3:] == ["B0RYLF9DYK", "]", "</action>"]
    assert "B0RYLF9DYK" not in plain.convert_ids_to_tokens(encode_action(plain, "click[B0RYLF9DYK]"))
    assert len(build_tokenizer(TEXTS, vocab_size=320, words=["Q7", "Q7"])) == len(tok) + 1  # duplicates count once
    for bad in (["two words"], [""], [" B0"], [3]):
        with pytest.raises(ValueError, match="words"):
            build_tokenizer(TEXTS, vocab_size=320, words=bad)


def test_tiny_chat_format(tok):
    prompt = format_prompt(tok, "SYS", "Say 7.")
    assert tok.decode(prompt) == "<|system|>SYS<|end|><|user|>Say 7.<|end|><|assistant|>"
    assert tok.decode(format_observation(tok, "Say 12.")) == "<|end|><|user|>Say 12.<|end|><|assistant|>"
    assert tok.decode(format_prompt(tok, "", "x")) == "<|user|>x<|end|><|assistant|>"
    with pytest.raises(ValueError, match="role"):
        format_turn(tok, "robot", "x")


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory, tok):
    path = str(tmp_path_factory.mktemp("chat"))
    save_model(build_default_model(tok, "tiny", seed=0), tok, path)
    loaded = load_model(path)[1]
    loaded.chat_template = CHATML
    return loaded


@settings(deadline=None, max_examples=30)
@given(pairs=st.lists(st.tuples(st.sampled_from(["", "SYS", "You are an agent."]), st.text(max_size=30)), max_size=6),
       chat=st.booleans())
@example(pairs=[("SYS", "<action>up</action>"), ("", "Room:\n#P_X#")], chat=False)
def test_batched_formatting_equals_one_text_at_a_time(tok, chat_tok, pairs, chat):
    """format_prompts / format_observations encode a whole batch in one tokenizer call: the same ids as
    encoding each text alone (tiny format from its pieces, chat template from its rendering)."""
    t = chat_tok if chat else tok
    enc = lambda text: t.encode(text, add_special_tokens=False)  # noqa: E731
    ids = lambda name: t.convert_tokens_to_ids(name)  # noqa: E731
    systems, observations = [s for s, _ in pairs], [o for _, o in pairs]
    if chat:
        render = lambda msgs: enc(t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))  # noqa: E731
        want_p = [render(([{"role": "system", "content": s}] if s else []) + [{"role": "user", "content": o}]) for s, o in pairs]
        want_o = [format_observation(t, o) for o in observations]  # one at a time (a batch of one)
    else:
        turn = lambda role, text: [ids(f"<|{role}|>"), *enc(text), ids("<|end|>")]  # noqa: E731
        want_p = [(turn("system", s) if s else []) + turn("user", o) + [ids("<|assistant|>")] for s, o in pairs]
        want_o = [[ids("<|end|>"), *turn("user", o), ids("<|assistant|>")] for o in observations]
    assert format_prompts(t, systems, observations) == want_p
    assert format_observations(t, observations) == want_o


@settings(deadline=None, max_examples=30)
@given(seqs=st.lists(st.lists(st.integers(0, 319), max_size=12), max_size=6), chat=st.booleans())
def test_decode_actions_equals_batch_decode(tok, chat_tok, seqs, chat):
    t = chat_tok if chat else tok
    assert decode_actions(t, seqs) == [t.decode(x, skip_special_tokens=True) for x in seqs]


def test_chat_template_pieces_concatenate_to_the_full_rendering(tmp_path, tok):
    save_model(build_default_model(tok, "tiny", seed=0), tok, str(tmp_path))
    _, chat_tok = load_model(str(tmp_path))
    chat_tok.chat_template = CHATML
    acts = ["<action>7</action>", "<action>12</action>"]
    ids = format_prompt(chat_tok, "SYS", "Say 7.") + encode_action(chat_tok, acts[0]) + \
        format_observation(chat_tok, "Say 12.") + encode_action(chat_tok, acts[1])
    msgs = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Say 7."},
            {"role": "assistant", "content": acts[0]}, {"role": "user", "content": "Say 12."},
            {"role": "assistant", "content": acts[1]}]
    full = chat_tok.apply_chat_template(msgs, tokenize=False)
    assert full.startswith(chat_tok.decode(ids)) and full[len(chat_tok.decode(ids)):] == "<|im_end|>\n"


def test_model_sizes_and_save_load_round_trip(tmp_path, tok, tiny):
    small = build_default_model(tok, "small", seed=0)
    n_small = sum(p.numel() for p in small.parameters())
    assert 1e6 < n_small < 10e6, n_small
    assert small.config.hidden_size == MODEL_SIZES["small"].hidden_size
    save_model(tiny, tok, str(tmp_path))
    loaded, tok2 = load_model(str(tmp_path), "cpu", torch.float32)
    x = torch.tensor([format_prompt(tok, "SYS", "Say 7.")])
    assert format_prompt(tok2, "SYS", "Say 7.") == x[0].tolist()
    torch.testing.assert_close(loaded(x).logits, tiny(x).logits)
    with pytest.raises(FileNotFoundError, match="path"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="size"):
        build_default_model(tok, "huge")


def _dropout_models(tok):
    """A Llama with attention dropout (a float attribute) and a GPT-2 with dropout modules, both tiny."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, attention_dropout=0.5))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3))
    return {"llama": llama, "gpt2": gpt2}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_disable_dropout_makes_train_mode_forwards_deterministic(tok, arch):
    """Recomputed old log-probs, the PRM's two passes and the PPO ratio compare forwards of the same tokens."""
    model = _dropout_models(tok)[arch]
    x = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]] * 2)
    with torch.no_grad():
        model.eval()
        ref = model(x).logits
        model.train()
        assert not torch.allclose(model(x).logits, ref)  # the setup really has dropout
        assert disable_dropout(model) is model
        torch.testing.assert_close(model(x).logits, ref)
        torch.testing.assert_close(clone_model(model)(x).logits, ref)  # the PRM copy inherits it
    assert model.training  # the mode is the caller's; only the rates change


def test_clone_model_is_independent(tok, tiny):
    clone = clone_model(tiny)
    x = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(clone(x).logits, tiny(x).logits)
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    assert not torch.allclose(clone(x).logits, tiny(x).logits)


def _reference(model, ids, am, act):
    """Full-vocabulary fp32 log-softmax at every position, then gather: the spec."""
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=am, position_ids=pos).logits.float()  # (R, L, V)
    logp = F.log_softmax(logits[:, :-1], -1)  # (R, L-1, V) predicts positions 1..L-1
    pred = act[:, 1:]
    ref = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)[pred]  # (T,) row-major
    ent = -(logp.exp() * logp).sum(-1)[pred]  # (T,)
    return ref, ent


@st.composite
def ragged_rows(draw):
    """R rows of different lengths, left- or right-padded, with a random action mask inside each row."""
    n = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(2, 24), min_size=n, max_size=n))
    left = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    width = max(lengths)
    ids = torch.randint(3, 300, (n, width), generator=gen)
    am = torch.zeros(n, width, dtype=torch.long)
    act = torch.rand(n, width, generator=gen) < 0.5
    for r, length in enumerate(lengths):
        cols = slice(width - length, width) if left else slice(0, length)
        am[r, cols] = 1
        act[r, cols.start] = False  # first real token has no prediction
    act &= am.bool()
    act[:, 0] = False
    return ids, am, act, draw(st.integers(1, 4))


@settings(deadline=None, max_examples=25)
@given(batch=ragged_rows())
def test_token_logprobs_matches_full_log_softmax(tiny, batch):
    ids, am, act, chunk = batch
    ref, ref_ent = _reference(tiny, ids, am, act)
    tri, tri_ent = token_logprobs(tiny, ids, am, act, chunk_rows=chunk, with_entropy=True)
    assert tri.shape == (int(act.sum()),)
    torch.testing.assert_close(tri, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tri_ent, ref_ent, atol=1e-5, rtol=1e-5)


def test_token_logprobs_gradient_matches_reference(tok):
    model = build_default_model(tok, "tiny", seed=1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (3, 12), generator=gen)
    am = torch.ones_like(ids)
    am[1, 9:] = 0
    act = (torch.rand(3, 12, generator=gen) < 0.6) & am.bool()
    act[:, 0] = False
    dy = torch.randn(int(act.sum()), generator=gen)  # random upstream gradient, not just .sum()
    grads = []
    for fn in (lambda: _reference(model, ids, am, act)[0], lambda: token_logprobs(model, ids, am, act, chunk_rows=2)):
        model.zero_grad()
        (fn() * dy).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for ref, tri in zip(*grads):
        torch.testing.assert_close(tri, ref, atol=1e-5, rtol=1e-4)


@st.composite
def rows_with_a_shared_prefix(draw):
    """Right-padded rows (the Batch layout) that begin with the same P tokens (a system prompt), then
    differ; action tokens only after the prefix, as in every rollout row."""
    n = draw(st.integers(2, 6))
    p = draw(st.integers(16, 40))
    lengths = draw(st.lists(st.integers(p + 2, p + 20), min_size=n, max_size=n))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    width = max(lengths)
    ids = torch.randint(3, 300, (n, width), generator=gen)
    ids[:, :p] = ids[0, :p]
    am = torch.zeros(n, width, dtype=torch.long)
    act = torch.rand(n, width, generator=gen) < 0.5
    first_action = p + 1 + draw(st.integers(0, 1))
    for r, length in enumerate(lengths):
        am[r, :length] = 1
        act[r, :first_action] = False
    act &= am.bool()
    act[0, min(first_action, lengths[0] - 1)] = True  # at least one action, right after the prefix
    return ids, am, act, draw(st.integers(2, 6)), draw(st.integers(0, 2**31 - 1))


@settings(deadline=None, max_examples=20)
@given(batch=rows_with_a_shared_prefix())
def test_shared_prefix_forward_gives_the_plain_values_and_gradients(tok, batch):
    ids, am, act, chunk, seed = batch
    first_action = int(act.any(0).nonzero()[0, 0])
    shared = [q for q in range(first_action) if (ids[:, :q] == ids[:1, :q]).all()]  # the definition, by loop
    assert shared_prefix_len(ids, am, act) == max(shared) >= 16  # so the shared path runs
    model = build_default_model(tok, "tiny", seed=seed % 1000)
    dy = torch.randn(int(act.sum()), generator=torch.Generator().manual_seed(seed))
    ref, _ = _reference(model, ids, am, act)
    (ref * dy).sum().backward()
    ref_grads = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    got, ent = token_logprobs(model, ids, am, act, chunk_rows=chunk, with_entropy=True, share_prefix=True)
    (got * dy).sum().backward()
    torch.testing.assert_close(got, ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, _reference(model, ids, am, act)[1].detach(), atol=1e-5, rtol=1e-5)
    for q, want in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(q.grad, want, atol=1e-5, rtol=1e-4)


def test_shared_prefix_len_stops_at_padding_differences_and_predictions():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 4, 9], [5, 6, 7, 8, 1]])
    am, act = torch.ones_like(ids), torch.zeros(3, 5, dtype=torch.bool)
    assert shared_prefix_len(ids, am, act) == 3  # first difference at column 3
    act[2, 3] = True  # column 3 is predicted from column 2's hidden state: that one must run per row
    assert shared_prefix_len(ids, am, act) == 2
    am[1, 0] = 0  # a left-padded row: nothing is shared
    assert shared_prefix_len(ids, am, act) == 0
    assert shared_prefix_len(ids[:1], am[:1], act[:1]) == 0  # one row: nothing to share


def test_token_logprobs_rejects_bad_arguments(tiny):
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="action_mask"):
        token_logprobs(tiny, ids, torch.ones_like(ids), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(R, L\)"):
        token_logprobs(tiny, ids, torch.ones(2, 3), torch.zeros(2, 4, dtype=torch.bool))
    assert token_logprobs(tiny, ids, torch.ones_like(ids), torch.zeros(2, 4, dtype=torch.bool)).shape == (0,)
