# The stages as Snakemake rules. workflow.py plans the jobs (their commands and settings) and runs Snakemake with
# `--configfile OUT_DIR/.workflow/plan-HASH.json --directory OUT_DIR`; each rule's output path holds its settings
# (recipes.paths), and `workflow.py stage` runs the job planned for that path. Not meant to be run by hand:
# use modular_pipeline.sh, rs_moded.sh or workflow.py.
import os

ROOT = workflow.basedir
PLAN = config["plan_path"]
JOBS = config["jobs"]
STAGE = f"{config['python']} {ROOT}/workflow.py stage {PLAN} {{output[0]}} --log {{log}}"

wildcard_constraints:
    task="[^/]+", run="[^/]+", cap="[^/]+", mod="[^/]+", label="[^/]+", c="[^/]+"


def needs(path):
    return lambda w: JOBS[path.format(**w)]["needs"] if path.format(**w) in JOBS else []


localrules: all

rule all:
    input: config["targets"]

rule baseline:        # the uncompressed fine-tune (model kept: the teacher and distillation source of its seed)
    output: "{task}/baseline/{run}/results.json"
    input: needs("{task}/baseline/{run}/results.json")
    log: "logs/{task}/baseline/{run}.log"
    shell: STAGE

rule capture:         # the teacher's activations
    output: "{task}/capture/{cap}/done.json"
    input: needs("{task}/capture/{cap}/done.json")
    log: "logs/{task}/capture/{cap}.log"
    shell: STAGE

rule modules:         # mha_modular.py, then ffn_modular.py
    output: "{task}/modules/{cap}/{mod}/done.json"
    input: needs("{task}/modules/{cap}/{mod}/done.json")
    log: "logs/{task}/modules/{cap}/{mod}.log"
    shell: STAGE

rule finetune:        # the compressed fine-tune
    output: "{task}/{label}/c{c}/{run}/results.json"
    input: needs("{task}/{label}/c{c}/{run}/results.json")
    log: "logs/{task}/{label}/c{c}/{run}.log"
    shell: STAGE
