"""The peer baseline on this pipeline's own splits: TF-IDF (1-2 grams) + logistic regression.

Fits on data/raw/train.parquet, selects C on data/raw/val.parquet, reports test accuracy once:

    python benchmarks/tfidf_baseline.py

Writes reports/benchmarks/tfidf_baseline.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/tfidf_baseline.json"))
    args = parser.parse_args()
    splits = {s: pd.read_parquet(args.raw / f"{s}.parquet") for s in ("train", "val", "test")}
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_df=0.9, sublinear_tf=True)
    x_train = vectorizer.fit_transform(splits["train"]["text"])
    x_val = vectorizer.transform(splits["val"]["text"])
    val_acc: dict[float, float] = {}
    models = {}
    for c in (1.0, 4.0, 16.0):  # selected on validation, never on test
        models[c] = LogisticRegression(C=c, max_iter=2000).fit(x_train, splits["train"]["label"])
        val_acc[c] = accuracy_score(splits["val"]["label"], models[c].predict(x_val))
    best = max(val_acc, key=val_acc.__getitem__)
    fit_seconds = time.perf_counter() - start
    test_pred = models[best].predict(vectorizer.transform(splits["test"]["text"]))
    result = {
        "model": "TF-IDF (1-2 grams, sublinear tf, min_df 2) + logistic regression",
        "selected_C": best,
        "val_acc_by_C": {str(k): round(v, 4) for k, v in val_acc.items()},
        "val_acc": round(val_acc[best], 4),
        "test_acc": round(accuracy_score(splits["test"]["label"], test_pred), 4),
        "fit_and_select_seconds": round(fit_seconds, 1),
        "machine": platform.machine(),
        "train_rows": len(splits["train"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
