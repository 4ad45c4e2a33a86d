"""The module stage, second half, after mha_modular.py (the same flags and output directory): the
feed-forward (FFN) blocks, one per layer, sized by the same allocation.json. The logic: modcomp/modular.py."""
from modcomp import modular
from modcomp.utils import run_main


def main(argv=None):
    modular.train_blocks(modular.build_parser("ffn", __doc__, argv).parse_args(argv))


if __name__ == "__main__":
    run_main(main)
