"""modcomp: modular training for transformer compression, the shared logic below the entry points at the root.

The stages (each an entry point at the root, a thin CLI over one module here):
    capture.py      capture_data.py   the teacher's layer inputs on task data (activations.py: the store)
    modular.py      mha_modular.py, ffn_modular.py   one low-rank block per layer, fitted in isolation
                    (data_init.py: the closed form; allocation.py: sizes under one budget; compression.py: the
                    blocks and their files)
    runner.py       run_superglue.py  plug the blocks in, fine-tune (finetune.py, distill.py), evaluate, record
    report.py       consolidate.py    median over seeds, retention, the tables
    closed_form.py  closed_form.py    the closed form alone (isolated or sequential), for experiments
    export.py       export.py         ONNX Runtime fp32/INT8 export with predict.py (a torch-free template)
    speed.py        run_speed.py      CPU latency of compressed shapes (inference.py: the runtimes)
The settings: config.py (every field, once) and configs/*.yaml (the recipes). The workflow: workflow.py (the
plan, one stage), workflow_cli.py (modular_pipeline.sh, rs_moded.sh) and Snakefile. Tasks: tasks.py. The model
itself is ../modeling_moddistilbert.py, one self-contained file (saved beside every model: trust_remote_code).
"""
