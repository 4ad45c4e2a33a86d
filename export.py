"""Export a fine-tuned checkpoint (RUN/model of run_superglue.py, compressed or not) as a deployable ONNX directory.

    python export.py runs/ft/stsb/x/seed1/model runs/deploy/stsb
    python runs/deploy/stsb/predict.py "A man is playing a guitar." "A man plays the guitar."

OUT_DIR gets:
  model.onnx        fp32, fused by ONNX Runtime's transformer optimizer: every attention block (each layer
                    with its own head size) one Attention node, SkipLayerNormalization, BiasGelu
  model_int8.onnx   ONNX Runtime dynamic INT8 of model.onnx (QAttention, DynamicQuantizeMatMul), in the scheme
                    of inference.ORT_INT8_SCHEMES whose logits move least on 128 training rows (--int8 to choose)
  tokenizer.json (+ the other tokenizer files), config.json (label names)
  predict.py        the example: onnxruntime + tokenizers + numpy, no torch (python predict.py --help)
  export.json       the checks: fused operator counts; fp32 logits against PyTorch's on the task's validation
                    rows (max |difference|, must be <= --tolerance); the validation score of PyTorch, ONNX fp32
                    and ONNX INT8; each INT8 scheme's calibration error; size on disk; batch-1 latency
The task (and its validation rows) comes from the checkpoint's config (finetuning_task) unless --task is given.
A multiple-choice model (COPA) is not exported. The ONNX code is inference.py's, shared with run_speed.py.
"""
from modcomp.export import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
