"""Train low-rank feed-forward (FFN) blocks, one per layer, in isolation, to imitate the frozen teacher's.

    python ffn_modular.py --activations_dir runs/rte/activations --output_dir runs/rte/modules \
        --compression 2 --epochs 10 [--mixup] [--init random]

Writes OUTPUT_DIR/layerNN_ffn.safetensors (what run_superglue.py --modules_dir loads), report.json
(held-out relative error per layer and epoch, trained vs SVD init) and loss_ffn.png."""
from modcomp import modular
from modcomp.utils import run_main


def main(argv=None):
    modular.train_blocks(modular.build_parser("ffn", __doc__, argv).parse_args(argv))


if __name__ == "__main__":
    run_main(main)
