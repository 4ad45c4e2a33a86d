"""Session 11: does fitting the allocation's curves on 8,192 instead of 16,384 training tokens per layer change
the allocation? allocation.allocate on seed 1's captures (the runs18 jobs' captures), output currency,
modular.py's split (holdout 0.1, seed 42), one thread. Usage: ab.py TASK C TOKENS -> one JSON line on stdout."""
import json, sys, time, torch
sys.path.insert(0, "/work/main")
torch.set_num_threads(1)
import allocation
from activations import ActivationStore
from modular import holdout_split, load_capture_teacher
task, c, tokens = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
store = ActivationStore(f"/work/runs18/{task}/teacher_seed1/cap")
teacher, _ = load_capture_teacher(store)
_, ex, _ = store.sequence_info()
tr, va = holdout_split(ex, 0.1, 42)
t = time.time()
r = allocation.allocate(teacher, store, tr, va, c, "cpu", curve_tokens=tokens, seed=42, log=lambda s: None)
print(json.dumps({"task": task, "c": c, "curve_tokens": tokens, "seconds": round(time.time() - t, 1),
                  "dims": r["dims"], "achieved": r["budget"]["achieved_compression"],
                  "predicted_error": r["predicted_error"], "used_curve_tokens": r["curve_tokens"]}), flush=True)
