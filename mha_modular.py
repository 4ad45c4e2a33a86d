"""The module stage, first half: one low-rank attention (MHA) block per layer, fitted in isolation to imitate the
teacher's; then ffn_modular.py with the same flags. Without flags, the default recipe (configs/default.yaml).

    python mha_modular.py --activations_dir runs/cap --output_dir runs/mod

The logic (and what it writes): modcomp/modular.py; the flags: --help."""
from modcomp import modular
from modcomp.utils import run_main


def main(argv=None):
    modular.train_blocks(modular.build_parser("mha", __doc__, argv).parse_args(argv))


if __name__ == "__main__":
    run_main(main)
