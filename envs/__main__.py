"""Print one expert episode: ``python -m envs sokoban 3`` (env name, task seed)."""
import sys

from envs import make_env, wrap_action

name = sys.argv[1] if len(sys.argv) > 1 else "sokoban"
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
env = make_env(name)
print(f"[system]\n{env.system_prompt}\n\n[observation]\n{env.reset(seed=seed)}")
done = False
while not done:
    action = wrap_action(env.expert_action())
    obs, reward, done, info = env.step(action)
    print(f"\n[action] {action}   reward {reward:+.2f}   won={info['won']}   score={info['score']:.2f}\n[observation]\n{obs}")
