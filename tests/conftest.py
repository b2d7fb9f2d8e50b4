"""Shared test set-up: run Triton kernels through the interpreter on CPU-only machines; a tiny
model with one packed Sokoban batch (test_istar.py, test_credit.py).

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection.
On a machine with a GPU, export TRITON_INTERPRET=0 to test the compiled kernels instead.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402  (after TRITON_INTERPRET: these imports may import triton)
import torch  # noqa: E402

from envs import make_env  # noqa: E402
from model import build_default_model, build_tokenizer  # noqa: E402
from rollout import pack, rollout  # noqa: E402
from warmstart import env_corpus  # noqa: E402


@pytest.fixture(scope="module")
def sokoban_setup():
    """A tiny model, and one packed Sokoban batch of 3 tasks x 4 rollouts with fixed win labels."""
    torch.manual_seed(0)
    make = lambda: make_env("sokoban", max_steps=3)  # noqa: E731
    tok = build_tokenizer(env_corpus(make, range(20)), vocab_size=300)
    policy = build_default_model(tok, "tiny", seed=0)
    trajs = rollout(policy, tok, make, [1, 2, 3], 4, temperature=1.0, max_action_tokens=8, generator=torch.Generator().manual_seed(0))
    batch = pack(trajs, "cpu", tok.pad_token_id)
    batch.won = torch.tensor([1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0]).bool()  # pairs per group: 2x2, 2x2, 1x3
    batch.outcome = batch.won.float()
    return tok, policy, batch
