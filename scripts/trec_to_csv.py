"""TREC question classification (Li & Roth, COLING 2002; UIUC Cognitive Computation Group) as the CSV files a
user would give the pipeline: one question per row, its coarse class (ABBR, DESC, ENTY, HUM, LOC, NUM) and fine
class. The .label format is `COARSE:fine question words ...`, one question a line.

    python scripts/trec_to_csv.py train_5500.label runs/trec/train.csv
    python scripts/trec_to_csv.py TREC_10.label runs/trec/test.csv

results/your_data_trec/ says where the copy it used came from."""
import argparse
import csv
import io

from modcomp.utils import UserError, atomic_write_bytes, run_main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("label_file")
    p.add_argument("csv_file")
    a = p.parse_args(argv)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["text", "label", "fine"])
    n = 0
    with open(a.label_file, encoding="latin-1") as f:   # the original files are Latin-1
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            tag, _, text = line.strip().partition(" ")
            coarse, sep, fine = tag.partition(":")
            if not sep or not text:
                raise UserError(f"{a.label_file}, line {i}: not `COARSE:fine question`")
            w.writerow([text, coarse, fine])
            n += 1
    atomic_write_bytes(a.csv_file, out.getvalue().encode("utf-8"))
    print(f"{a.csv_file}: {n} questions")


if __name__ == "__main__":
    run_main(main)
