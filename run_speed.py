"""CPU inference benchmark: uncompressed vs compressed encoder, fp32 and INT8, PyTorch and ONNX Runtime, in one
process, variants interleaved in every repeat.

The logic: modcomp/speed.py; the flags: `python run_speed.py --help`."""
from modcomp.speed import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
