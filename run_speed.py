"""CPU inference benchmark: uncompressed vs compressed encoder, fp32 and INT8, PyTorch and ONNX Runtime, in one
process, variants interleaved in every repeat.

    python run_speed.py --threads 2 --json results/speed.json                 # DistilBERT shape, random weights
    python run_speed.py --model_name_or_path minilm --compression 2           # a real teacher's shape
    python run_speed.py --onnx_dir runs/onnx --torchscript --compile          # + ONNX Runtime, TorchScript, compile
    python run_speed.py --checkpoint runs/ft/stsb/x/seed1/model --task stsb --accuracy_only \\
        --int8_backends dynamic_per_channel smooth --onnx_dir runs/onnx       # validation score, fp32 vs each INT8

Beside every speedup it prints the FLOP bound: the ratio of multiply-adds of the whole model (encoder, the
[CLS] head) uncompressed vs compressed at that sequence length, and the fraction of it reached. With
--onnx_dir, `ort-int8 c=1` is the peer row (what a user would pick instead: the uncompressed model with ONNX
Runtime's fused graph and dynamic INT8) and every row also gets its speedup over it. The INT8 schemes (PyTorch
and ONNX Runtime) are in inference.py. The JSON records the CPU model and its ISA flags: INT8 speed depends on
VNNI/AMX. --profile also profiles the ONNX Runtime rows by operator (ONNX Runtime's own profiler).
"""
from modcomp.speed import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
