"""Does fitting the allocation's curves on 8,192 instead of 16,384 training tokens per layer change the
allocation? allocation.allocate on one capture, output currency, modular.py's split (holdout 0.1, seed 42), one
thread. One JSON line on stdout (what ab.jsonl holds, one line per run):

    OMP_NUM_THREADS=1 python results/joint_allocation/curve_tokens_8192_vs_16384/ab.py CAPTURE_DIR TASK C TOKENS

CAPTURE_DIR: the seed-1 capture of TASK from its fine-tuned baseline (the pipeline's OUT_DIR/TASK/capture/ft-seed1-...).
Needs the package installed (install.sh: pip install -e .)."""
import json
import sys
import time

import torch

from modcomp import allocation
from modcomp.activations import ActivationStore
from modcomp.modular import holdout_split, load_capture_teacher

torch.set_num_threads(1)
cap, task, c, tokens = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
store = ActivationStore(cap)
teacher, _ = load_capture_teacher(store)
_, ex, _ = store.sequence_info()
tr, va = holdout_split(ex, 0.1, 42)
t = time.time()
r = allocation.allocate(teacher, store, tr, va, c, "cpu", curve_tokens=tokens, seed=42, log=lambda s: None)
print(json.dumps({"task": task, "c": c, "curve_tokens": tokens, "seconds": round(time.time() - t, 1),
                  "dims": r["dims"], "achieved": r["budget"]["achieved_compression"],
                  "predicted_error": r["predicted_error"], "used_curve_tokens": r["curve_tokens"]}), flush=True)
