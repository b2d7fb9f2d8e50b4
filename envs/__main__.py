"""Print one expert episode, ``python -m envs sokoban 3`` (env name, task seed), or the scripted
policies' floor and ceiling on held-out tasks, ``python -m envs webshop --baselines 300`` (the
expert's and uniformly random actions' success rate, mean final score and episode length on the
first N held-out task seeds, the ones ``train.py``'s evaluations use)."""
import argparse

from envs import EVAL_SEED_BASE, REGISTRY, make_env, scripted_play, wrap_action

parser = argparse.ArgumentParser(prog="python -m envs", description=__doc__.split(",")[0])
parser.add_argument("env", nargs="?", default="sokoban", choices=sorted(REGISTRY))
parser.add_argument("seed", nargs="?", type=int, default=0, help="task seed of the printed episode")
parser.add_argument("--baselines", type=int, default=0, metavar="N",
                    help="instead of an episode, print expert and random play over N held-out tasks")
args = parser.parse_args()
if args.baselines < 0:
    parser.error(f"--baselines: expected a positive number of tasks, got {args.baselines}")
if args.baselines:
    for policy in ("expert", "random"):
        r = scripted_play(lambda: make_env(args.env), policy, range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.baselines))
        print(f"{args.env} {policy:6s} success {r['success']:.3f}  mean score {r['score']:.3f}  "
              f"mean steps {r['steps']:.2f}  ({args.baselines} held-out tasks)")
else:
    env = make_env(args.env)
    print(f"[system]\n{env.system_prompt}\n\n[observation]\n{env.reset(seed=args.seed)}")
    done = False
    while not done:
        action = wrap_action(env.expert_action())
        obs, reward, done, info = env.step(action)
        print(f"\n[action] {action}   reward {reward:+.2f}   won={info['won']}   score={info['score']:.2f}\n[observation]\n{obs}")
