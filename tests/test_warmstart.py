"""warmstart.py: the expert probe (the policy's probability of the expert's action and its entropy there, against a plain forward) and the lr schedule."""
import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from config import Config
from envs import make_env
from envs.base import wrap_action
from warmstart import PROBE_SEED_BASE, _true_runs, expert_prob, expert_probe, expert_rows


@given(st.lists(st.booleans(), max_size=40))
def test_true_runs_are_the_lengths_of_the_true_groups(mask):
    assert _true_runs(mask) == [len(list(g)) for k, g in itertools.groupby(mask) if k]


def _brute_force(policy, rows):
    """Per action: exp of the summed log-probs of its tokens, each from a full-vocabulary log-softmax
    of one unpadded row's forward; and the entropy −Σ_v π_v log π_v of every action token's
    distribution. Returns (mean probability over actions, mean entropy over action tokens)."""
    probs, entropy = [], []
    for ids, mask in rows:
        with torch.no_grad():
            logits = policy(torch.tensor([ids])).logits[0].float()  # (L, V)
        full = torch.log_softmax(logits, -1)[:-1]  # (L-1, V)
        logp = full.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]  # (L-1,)
        acc = None
        for p, m in enumerate(mask):
            if m:
                acc = (acc or 0.0) + logp[p - 1].item()
                entropy.append(-(full[p - 1].exp() * full[p - 1]).sum().item())
            elif acc is not None:
                probs.append(np.exp(acc))
                acc = None
        if acc is not None:
            probs.append(np.exp(acc))
    return float(np.mean(probs)), float(np.mean(entropy))


@settings(max_examples=4, deadline=None)
@given(history=st.sampled_from([0, 1, 2]), episodes=st.integers(1, 4), chunk=st.integers(1, 5))
def test_expert_probe_is_the_mean_probability_of_each_expert_action_and_the_entropy_at_its_tokens(sokoban_setup, history, episodes, chunk):
    """Rows hold one or several actions (history windows); any chunking gives the same mean."""
    tok, policy, _ = sokoban_setup
    cfg = Config(max_context=1024, max_action_tokens=8, history_steps=history)
    make = lambda: make_env("sokoban", max_steps=3)  # noqa: E731
    rows = expert_rows(tok, make, cfg, episodes)
    expected_actions = sum(len(_true_runs(m)) for _, m in rows)
    env = make()
    played = 0
    for k in range(episodes):  # the rows are the expert's episodes on the probe seeds, one run per action
        env.reset(PROBE_SEED_BASE + k)
        while not env.done:
            env.step(wrap_action(env.expert_action()))
            played += 1
    assert expected_actions == played
    prob, entropy = expert_probe(policy.eval(), rows, tok.pad_token_id, "cpu", chunk=chunk)
    want_prob, want_entropy = _brute_force(policy, rows)
    assert abs(prob - want_prob) < 1e-5 and abs(entropy - want_entropy) < 1e-4
    assert expert_prob(policy, rows, tok.pad_token_id, "cpu", chunk=chunk) == prob


def test_warm_start_raises_the_probability_of_the_expert_action():
    """On the corridor (test_learning.py; expert: always "left"), demos with 80% random actions give
    p(left) = 0.2 + 0.8 / 2 = 0.6 per step: the probed probability climbs from ~0 (the fresh model
    does not even know the answer format) towards it, and is reported after every step."""
    from test_learning import TEXTS, Corridor, _cfg

    from model import build_default_model, build_tokenizer
    from warmstart import warm_start
    tok = build_tokenizer(TEXTS, vocab_size=300)
    policy = build_default_model(tok, "tiny", seed=0)
    cfg = _cfg("rloo", True)
    rows = expert_rows(tok, Corridor, cfg, 4)
    seen = []
    warm_start(policy, tok, Corridor, cfg, "cpu", on_step=lambda step, loss: seen.append(
        (step, expert_prob(policy.eval(), rows, tok.pad_token_id, "cpu"))))
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[0][1] < 0.1 and 0.45 < seen[-1][1] < 0.75, seen[::8]


@given(total=st.integers(1, 5000), peak=st.floats(1e-6, 1.0))
def test_cosine_schedule_warms_up_then_decays_to_a_tenth(total, peak):
    """Linear warm-up to the peak over the first 5% of the steps, then monotone cosine decay ending at
    peak / 10; never above the peak or below a tenth of it after the warm-up."""
    from warmstart import warmstart_lr
    lrs = [warmstart_lr(s, total, peak, "cosine") for s in range(total)]
    warmup = max(1, -(-total * 5 // 100))
    assert all(0 < lr <= peak * (1 + 1e-12) for lr in lrs)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))  # the warm-up rises
    if total > warmup:
        assert abs(lrs[warmup] - peak) < 1e-9 * peak  # the decay starts at the peak ...
        assert all(b <= a * (1 + 1e-12) for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # ... falls monotonically ...
        assert abs(lrs[-1] - peak / 10) < 1e-9 * peak or total - warmup == 1  # ... and ends at a tenth
    assert [warmstart_lr(s, total, peak, "constant") for s in range(total)] == [peak] * total


def test_warm_start_follows_its_schedule_and_constant_keeps_old_caches(tmp_path):
    """The optimiser's lr at each step is the schedule's; the cache key of ``constant`` is the one
    written before the setting existed (the settings without it), so those caches are still found."""
    import hashlib
    import json
    from unittest import mock

    from test_learning import TEXTS, Corridor, _cfg

    from model import build_default_model, build_tokenizer
    from warmstart import WARMSTART_KEYS, _vocab_hash, cache_dir, warm_start, warmstart_lr
    tok = build_tokenizer(TEXTS, vocab_size=300)
    policy = build_default_model(tok, "tiny", seed=0)
    cfg = _cfg("rloo", True)
    cfg.warmstart_episodes, cfg.warmstart_epochs = 48, 7  # 3 batches of 16 episodes per epoch: 21 steps, 2 warm-up
    seen = []
    real_step = torch.optim.AdamW.step

    def spy(opt, *a, **k):
        seen.append(opt.param_groups[0]["lr"])
        return real_step(opt, *a, **k)

    with mock.patch.object(torch.optim.AdamW, "step", spy):
        warm_start(policy, tok, Corridor, cfg, "cpu")
    assert seen == [warmstart_lr(s, 21, cfg.warmstart_lr, "cosine") for s in range(21)]
    assert seen[0] < seen[1] == cfg.warmstart_lr and abs(seen[-1] - cfg.warmstart_lr / 10) < 1e-12

    cfg.out_dir = str(tmp_path)
    cosine = cache_dir(cfg, tok)
    cfg.warmstart_schedule = "constant"
    old = json.dumps({**{k: getattr(cfg, k) for k in WARMSTART_KEYS if k not in ("warmstart_schedule", "carvings", "shuffle_ids", "system_prompt", "numbered_results")},
                      "vocab": _vocab_hash(tok)}, sort_keys=True)  # the key before those settings existed
    assert cache_dir(cfg, tok).name == hashlib.sha1(old.encode()).hexdigest()[:16] != cosine.name
    cfg.carvings = 16  # Locks' number of carvings shapes the demonstrations: a key of its own
    assert cache_dir(cfg, tok).name not in (hashlib.sha1(old.encode()).hexdigest()[:16], cosine.name)
    carved, cfg.shuffle_ids = cache_dir(cfg, tok).name, True  # WebShop's shuffled IDs change every demonstration
    assert cache_dir(cfg, tok).name not in (hashlib.sha1(old.encode()).hexdigest()[:16], cosine.name, carved)
    shuffled, cfg.system_prompt = cache_dir(cfg, tok).name, False  # rows without the system prompt
    assert cache_dir(cfg, tok).name not in (hashlib.sha1(old.encode()).hexdigest()[:16], cosine.name, carved, shuffled)
    no_prompt, cfg.numbered_results = cache_dir(cfg, tok).name, True  # WebShop's numbered results change its clicks
    assert cache_dir(cfg, tok).name not in (hashlib.sha1(old.encode()).hexdigest()[:16], cosine.name, carved, shuffled, no_prompt)
