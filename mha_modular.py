"""The module stage's attention (MHA) blocks: one low-rank block per layer, fitted in isolation to imitate the frozen
teacher's. Without flags, the default recipe (configs/default.yaml): the closed form on the capture, sizes from
the joint allocation at c=2 (allocation.json, shared with the other block kind); the paper's is trained from a
random start (--config paper, or --init random --module_epochs 200 --allocate 0).

    python mha_modular.py --activations_dir runs/cap --output_dir runs/mod        # then ffn_modular.py, the same flags

Writes OUTPUT_DIR/layerNN_mha.safetensors (what run_superglue.py --modules_dir loads), report.json (held-out
relative error per layer) and loss_mha.png. The logic: modcomp/modular.py; the flags: --help."""
from modcomp import modular
from modcomp.utils import run_main


def main(argv=None):
    modular.train_blocks(modular.build_parser("mha", __doc__, argv).parse_args(argv))


if __name__ == "__main__":
    run_main(main)
