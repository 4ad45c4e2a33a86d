"""Markdown tables of the modular stage from capture manifests and trainer reports.

    python scripts/modular_tables.py results/modular_rte results/modular_stsb ...

Each dir holds capture_manifest.json and report.json (copies of what capture_data.py and the trainers
wrote). Prints the storage table and the per-layer held-out relative errors (SVD init -> trained)."""
import json
import os
import sys


def main(dirs):
    print("| task | examples | sequences (with --augment) | tokens | bytes/sample/layer | original | ratio |")
    print("|---|---|---|---|---|---|---|")
    reports = {}
    for d in dirs:
        m = json.load(open(os.path.join(d, "capture_manifest.json")))
        print(f"| {m['task']} | {m['n_examples']} | {m['n_sequences']} (augment {m['augment']}) | {m['n_tokens']:,} "
              f"| {m['bytes_per_sample_per_layer']:,.0f} | {m['original_bytes_per_sample_per_layer']:,} "
              f"| 1/{1 / m['storage_ratio']:.1f} |")
        reports[m["task"]] = json.load(open(os.path.join(d, "report.json")))["layers"]
    print()
    layers = sorted({e["layer"] for r in reports.values() for e in r})
    print("| task | block | " + " | ".join(f"layer {i}" for i in layers) + " |")
    print("|---|---|" + "---|" * len(layers))
    for task, entries in reports.items():
        for block in ("mha", "ffn"):
            by = {e["layer"]: e for e in entries if e["block"] == block}
            cells = [f"{by[i]['svd_init_rel_error']:.3f} → **{by[i]['trained_rel_error']:.3f}**" if i in by else "-"
                     for i in layers]
            print(f"| {task} | {block} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
