"""Fine-tune and evaluate one task for one seed; writes OUTPUT_DIR/results.json (and the model, HF format).

    python run_superglue.py --model_name_or_path minilm --task rte --data_dir ../shared/data \
        --output_dir runs/rte/baseline/seed1 --seed 1
    python run_superglue.py ... --compression 2 --init svd                 # compressed, SVD start
    python run_superglue.py ... --compression 2 --modules_dir runs/rte/modules   # modular (trained blocks)
"""
from modcomp.runner import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
