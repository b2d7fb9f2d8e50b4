"""rollout.py: batched multi-turn rollouts and packing, on a tiny deterministic fake env.

The fake env, "say the number shown", has episodes of 1-4 steps (1 + seed % 4) whatever the
actions, so trajectories of one batch end at different times.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from envs.base import Env, wrap_action
from model import (build_default_model, build_tokenizer, encode_action, format_observation, format_prompt,
                   load_model, save_model, stop_token_ids, token_logprobs)
import kvcache
from kvcache import _compact, _forward, _left_pad
from rollout import _closes_action, _vocab_tables, next_context, pack, rollout, window_rows

ENGINES = ["static", "hf"]  # engine.py's static cache + functional forward, kvcache.py's HF forward

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class SayNumberEnv(Env):
    name, max_steps = "say_number", 4
    system_prompt = "Say the number shown as <action>N</action>."

    def _reset(self, seed):
        rng = np.random.default_rng(seed)
        self.numbers = rng.integers(0, 1000, size=1 + seed % 4).tolist()  # 1-3 digits: actions vary in length
        self.i = self.correct = 0
        return self._obs()

    def _obs(self):  # observations of different lengths, so the batch cache gets holes
        return f"Say {self.numbers[self.i]}." if self.i % 2 == 0 else f"Now say {self.numbers[self.i]}, please."

    def _step(self, action):
        valid = action is not None and action.isdigit()
        right = valid and int(action) == self.numbers[self.i]
        self.i, self.correct = self.i + 1, self.correct + right
        done = self.i == len(self.numbers)
        obs = "Done." if done else self._obs()
        return obs, float(right), done, {"valid_action": valid, "won": done and self.correct == self.i,
                                         "score": self.correct / len(self.numbers), "optimal": right}

    def expert_action(self):
        return str(self.numbers[self.i])

    def random_action(self, rng):
        return str(int(rng.integers(0, 1000)))


def _demo(tok, seed):
    """An expert episode as (ids, action_mask) in the rollout's own format."""
    env = SayNumberEnv()
    obs = env.reset(seed)
    ids, mask, done = format_prompt(tok, env.system_prompt, obs), None, False
    mask = [False] * len(ids)
    while not done:
        act = encode_action(tok, wrap_action(env.expert_action())) + [tok.eos_token_id]
        obs, _, done, _ = env.step(tok.decode(act, skip_special_tokens=True))
        ctx = [] if done else format_observation(tok, obs)[1:]  # the EOS closed the turn already
        ids, mask = ids + act + ctx, mask + [True] * len(act) + [False] * len(ctx)
    return ids, mask


@pytest.fixture(scope="module")
def tok():
    env, texts = SayNumberEnv(), [SayNumberEnv.system_prompt]
    for s in range(40):
        texts += [env.reset(s), wrap_action(env.expert_action()), "Done.", "Now say 1, please."]
    return build_tokenizer(texts, vocab_size=320)


@pytest.fixture(scope="module")
def random_model(tok):
    return build_default_model(tok, "tiny", seed=0)


@pytest.fixture(scope="module")
def trained(tok):
    """A tiny model taught the action format by a few SFT steps, so actions end with </action>/EOS."""
    model = build_default_model(tok, "tiny", seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    demos = [_demo(tok, s) for s in range(32)]
    batch = pack_rows = [torch.tensor(x) for x, _ in demos], [torch.tensor(m) for _, m in demos]
    ids = torch.nn.utils.rnn.pad_sequence(batch[0], batch_first=True, padding_value=tok.pad_token_id)
    act = torch.nn.utils.rnn.pad_sequence(pack_rows[1], batch_first=True)
    am = torch.nn.utils.rnn.pad_sequence([torch.ones(len(x)) for x in batch[0]], batch_first=True).long()
    losses = []
    for _ in range(60):
        loss = -token_logprobs(model, ids, am, act, chunk_rows=32).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses  # the SFT really learned (token_logprobs carries gradients)
    return model.eval()


def _check_logp_and_steps(trajs, model, tok, atol=1e-4):
    """Recorded log-probs == a fresh forward on the packed batch; steps tile the action tokens."""
    batch = pack(trajs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        fresh = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.action_mask)
    torch.testing.assert_close(batch.old_logp, fresh, atol=atol, rtol=0)
    assert int(batch.step_cu[-1]) == int(batch.action_mask.sum()) == batch.old_logp.numel()
    packed = batch.input_ids[batch.action_mask].tolist()  # (T,) row-major action tokens
    for n, t in enumerate(trajs):
        for s, text in enumerate(t.actions):
            step = int(batch.traj_cu[n]) + s
            toks = packed[int(batch.step_cu[step]):int(batch.step_cu[step + 1])]
            assert tok.decode(toks, skip_special_tokens=True) == text
    return batch


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_name,always_compact", [("random_model", False), ("trained", False), ("trained", True)])
def test_recorded_logp_equals_fresh_forward(request, monkeypatch, tok, model_name, always_compact, engine):
    model = request.getfixturevalue(model_name)
    if always_compact:  # HF cache: gather the cache after every turn, holes or not (the static engine always does)
        monkeypatch.setattr(kvcache, "_compact", functools.partial(kvcache._compact, slack=0.0))
    trajs = rollout(model, tok, SayNumberEnv, [0, 1, 2, 3, 6], 2, temperature=1.0, max_action_tokens=8, seed=1,
                    engine=engine)
    batch = _check_logp_and_steps(trajs, model, tok)
    assert [t.num_steps for t in trajs] == [1 + s % 4 for s in [0, 1, 2, 3, 6] for _ in range(2)]
    assert all(max(t.step_lengths) <= 8 for t in trajs)
    torch.testing.assert_close(batch.outcome, torch.tensor([sum(t.step_rewards) for t in trajs]))


@pytest.mark.parametrize("engine", ENGINES)
def test_trained_model_plays_and_groups_are_contiguous(tok, trained, engine):
    seeds, g = [5, 2, 7], 3
    trajs = rollout(trained, tok, SayNumberEnv, seeds, g, temperature=0.0, max_action_tokens=12, engine=engine)
    assert [t.group_id for t in trajs] == [i // g for i in range(len(seeds) * g)]
    assert [t.task_seed for t in trajs] == [s for s in seeds for _ in range(g)]
    batch = pack(trajs, pad_id=tok.pad_token_id)
    assert batch.group_cu.tolist() == [0, 3, 6, 9]
    assert batch.traj_cu.tolist() == np.cumsum([0] + [t.num_steps for t in trajs]).tolist()
    # The early-ending episodes left the batch (an env stepped after done raises) and the format is learnt.
    assert all(a.endswith("</action>") for t in trajs for a in t.actions)
    assert np.mean([v for t in trajs for v in t.step_valid]) > 0.8
    # The env's ground-truth step labels (credit.py) are recorded per step and packed in step order.
    assert [t.step_optimal for t in trajs] == [[int(r) for r in t.step_rewards] for t in trajs]
    assert batch.step_optimal.tolist() == [int(r) for t in trajs for r in t.step_rewards]


@pytest.mark.parametrize("engine", ENGINES)
def test_batched_greedy_equals_one_by_one(tok, trained, engine):
    seeds = [0, 1, 2, 3, 5]
    together = rollout(trained, tok, SayNumberEnv, seeds, 2, temperature=0.0, max_action_tokens=10, engine=engine)
    for i, s in enumerate(seeds):
        alone = rollout(trained, tok, SayNumberEnv, [s], 1, temperature=0.0, max_action_tokens=10, engine=engine)[0]
        for t in together[2 * i:2 * i + 2]:
            assert t.rows == alone.rows and t.actions == alone.actions and t.step_rewards == alone.step_rewards
            np.testing.assert_allclose(t.logp, alone.logp, atol=1e-4)


def test_sampling_is_seeded_and_top_p_to_zero_is_greedy(tok, random_model):
    run = lambda **kw: rollout(random_model, tok, SayNumberEnv, [1, 2], 2, max_action_tokens=6, **kw)  # noqa: E731
    a, b, c = run(seed=3), run(seed=3), run(seed=4)
    assert [t.rows for t in a] == [t.rows for t in b] and [t.rows for t in a] != [t.rows for t in c]
    greedy = run(temperature=0.0)
    assert [t.rows for t in run(top_p=1e-6, seed=9)] == [t.rows for t in greedy]


@settings(deadline=None, max_examples=8)
@given(max_context=st.integers(40, 70), history=st.sampled_from([None, 1, 2]), seed=st.integers(0, 100),
       engine=st.sampled_from(ENGINES))
def test_history_window_keeps_every_action_token_once(tok, random_model, max_context, history, seed, engine):
    seeds = [3, 7, 2]
    trajs = rollout(random_model, tok, SayNumberEnv, seeds, 2, max_action_tokens=6, max_context=max_context,
                    max_history_steps=history, seed=seed, engine=engine)
    batch = _check_logp_and_steps(trajs, random_model, tok)
    prompt_len = [len(format_prompt(tok, SayNumberEnv.system_prompt, t.observations[0])) for t in trajs]
    for t, p in zip(trajs, prompt_len):
        generated = [x for row, m in zip(t.rows, t.action_masks) for x, keep in zip(row, m) if keep]
        assert len(generated) == sum(t.step_lengths)
        assert all(row[:p] == t.rows[0][:p] for row in t.rows)  # every row starts with the prompt
        # the documented bound: max_context holds unless the prompt + one observation + an action cannot fit
        longest = p + max(len(format_observation(tok, o)) for o in t.observations) + 6
        assert all(len(row) <= max(max_context, longest) for row in t.rows)
        if history is not None:  # a row holds at most `history` past steps, so each later step opens a row
            assert len(t.rows) >= max(1, t.num_steps - history)
        # window_rows (the warm start's layout) rebuilds the same rows from the actions and observations
        ends = np.cumsum(t.step_lengths).tolist()
        acts = [generated[e - n:e] for e, n in zip(ends, t.step_lengths)]
        stops = stop_token_ids(tok, random_model)
        steps = [(a, next_context(tok, t.observations[i + 1], a, stops) if i + 1 < t.num_steps else None)
                 for i, a in enumerate(acts)]
        prompt = format_prompt(tok, SayNumberEnv.system_prompt, t.observations[0])
        assert window_rows(prompt, steps, max_context, 6, history) == (t.rows, t.action_masks)
    assert (batch.row_traj.bincount() >= 1).all() and batch.row_cu[-1] == batch.input_ids.shape[0]


@pytest.fixture(scope="module")
def windowed(tok, random_model):
    """Trajectories of 1-4 steps, several of them spread over more than one row."""
    trajs = rollout(random_model, tok, SayNumberEnv, [0, 1, 2, 3], 2, max_action_tokens=5, max_context=50, seed=2)
    assert max(len(t.rows) for t in trajs) > 1
    return trajs


@pytest.mark.parametrize("history", [1, 2])
def test_history_steps_alone_set_the_rows(tok, random_model, history):
    trajs = rollout(random_model, tok, SayNumberEnv, [3, 2, 0], 1, max_action_tokens=4, max_history_steps=history)
    assert [t.num_steps for t in trajs] == [4, 3, 1]
    assert [len(t.rows) for t in trajs] == [max(1, t.num_steps - history) for t in trajs]
    _check_logp_and_steps(trajs, random_model, tok)


@settings(deadline=None, max_examples=20)
@given(subset=st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True))
def test_select_equals_packing_the_subset(tok, windowed, subset):
    trajs = windowed
    got = pack(trajs, pad_id=tok.pad_token_id).select(subset)
    want = pack([trajs[i] for i in subset], pad_id=tok.pad_token_id)
    for name in want.__dataclass_fields__:
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_compacting_holes_keeps_the_logits(tok, random_model):
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12]]
    kv, _ = _forward(random_model, None, *_left_pad(seqs, tok.pad_token_id, "cpu"))
    ids, mask = torch.tensor([[13, 0, 0, 0, 14], [15, 16, 17, 18, 19]]), torch.tensor([[1, 0, 0, 0, 1], [1] * 5])
    kv, _ = _forward(random_model, kv, ids, mask)  # row 0 now has a 3-column hole
    nxt, one = torch.tensor([[20], [21]]), torch.ones(2, 1, dtype=torch.long)
    _, want = _forward(random_model, kv, nxt, one)
    kv, _ = _forward(random_model, None, *_left_pad(seqs, tok.pad_token_id, "cpu"))
    kv, _ = _forward(random_model, kv, ids, mask)
    compact = _compact(kv, slack=0.0)
    assert compact.attn.tolist() == [[1] * 8, [0] + [1] * 7]  # real columns right-aligned, holes gone
    _, got = _forward(random_model, compact, nxt, one)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("chat_template", [False, True])
def test_rollout_with_a_loaded_model(tmp_path, tok, trained, chat_template, engine):
    save_model(trained, tok, str(tmp_path))
    model, loaded_tok = load_model(str(tmp_path), "cpu", torch.float32)
    if chat_template:
        loaded_tok.chat_template = CHATML
    trajs = rollout(model, loaded_tok, SayNumberEnv, [1, 3], 2, max_action_tokens=8, seed=0, engine=engine)
    _check_logp_and_steps(trajs, model, loaded_tok)
    assert ("<|im_start|>user" in loaded_tok.decode(trajs[0].rows[0])) == chat_template


def test_action_end_tag_is_found_in_one_token_or_several(tok):
    stop, closes = _vocab_tables(tok, len(tok) + 3, [tok.eos_token_id], "cpu")  # a vocabulary wider than the tokenizer's
    one = tok.encode("<action>up</action>", add_special_tokens=False)
    spelled = sum((tok.encode(p, add_special_tokens=False) for p in ["<action>up", "< /", "ACTION", " >"]), [])
    assert stop[one[-1]] and not closes[one[-1]]  # the tag token stops a row on the device, no host check
    assert closes[spelled[-1]] and not stop[spelled[-1]] and _closes_action(tok, spelled[-16:])
    for ids in (one, spelled):
        assert _closes_action(tok, ids[-16:]) and not _closes_action(tok, ids[:-1])
    assert stop[tok.eos_token_id] and not stop[tok.encode("up", add_special_tokens=False)].any()
    assert not (closes[-3:].any() or stop[-3:].any()) and not closes[tok.encode("up", add_special_tokens=False)].any()
    assert not closes[tok.convert_tokens_to_ids("<action>")]  # opens every action: no host check for it


@settings(deadline=None, max_examples=300)
@given(prefix=st.text(alphabet="</actionACTION >x\n", max_size=12), token=st.text(alphabet="</actionACTION >x\n", min_size=1, max_size=8))
@example(prefix="</act", token="ion>")
@example(prefix="< / ACTION", token=" >")
@example(prefix="</action", token=">")
def test_only_tokens_that_can_finish_a_tag_are_checked_on_the_host(prefix, token):
    """A token that completes an </action> tag begun in earlier text (the tag is in neither part alone)
    passes the cheap filter that decides which sampled tokens the host decodes (rollout._vocab_tables)."""
    from rollout import _ACTION_END_RE, _TAG_TAIL_RE
    if _ACTION_END_RE.search(prefix + token) and not _ACTION_END_RE.search(prefix) and not _ACTION_END_RE.search(token):
        assert _TAG_TAIL_RE.fullmatch(token.split(">", 1)[0]), (prefix, token)


def test_rollout_rejects_bad_arguments(tok, random_model):
    with pytest.raises(ValueError, match="group_size"):
        rollout(random_model, tok, SayNumberEnv, [0], 0)
    with pytest.raises(ValueError, match="max_context"):
        rollout(random_model, tok, SayNumberEnv, [0], 1, max_context=10**6)
    with pytest.raises(ValueError, match="max_action_tokens"):
        rollout(random_model, tok, SayNumberEnv, [0], 1, max_action_tokens=64, max_context=64)
    with pytest.raises(ValueError, match="top_p"):
        rollout(random_model, tok, SayNumberEnv, [0], 1, top_p=0.0)
    with pytest.raises(ValueError, match="engine"):
        rollout(random_model, tok, SayNumberEnv, [0], 1, engine="vllm")


@pytest.mark.parametrize("engine", ENGINES)
def test_smoke_with_sokoban(tok, random_model, engine):
    """The real Sokoban env (15 steps, multi-line boards) through the same engine, with a 2-step window."""
    sokoban = pytest.importorskip("envs.sokoban")
    trajs = rollout(random_model, tok, sokoban.SokobanEnv, [0, 1], 2, max_action_tokens=6, max_history_steps=2,
                    seed=0, engine=engine)
    _check_logp_and_steps(trajs, random_model, tok)
    assert all(1 <= t.num_steps <= 15 and len(t.observations) == t.num_steps + 1 for t in trajs)
    assert all(len(t.rows) == max(1, t.num_steps - 2) for t in trajs)
