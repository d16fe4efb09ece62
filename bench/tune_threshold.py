"""Choose the FallbackClassifier threshold on a validation split of the training data.

The threshold trades declining in-scope messages (asking to rephrase) against acting on
messages the bot should decline. It is chosen here by 4-fold cross-validation over our own
training data (data/nlu, CLINC sample included), never on a held-out test set: for each
threshold, in-scope accuracy and out-of-scope recall/precision of the held-back folds.

    python -m bench.tune_threshold
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from rasa.shared.nlu.training_data.loading import load_data
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import StratifiedKFold

from components.minilm import shared_encoder
from components.sentence_classifier import (EMBEDDING_CACHE, EmbeddingCache, SentenceIntentClassifier, fit_logistic_regression,
                                             normalise)

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.0, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def main() -> int:
    data = load_data(str(ROOT / "data" / "nlu"))
    examples = [m for m in data.intent_examples if m.get("text")]
    texts = [normalise(m.get("text")) for m in examples]
    labels = np.array([m.get("intent_response_key") or m.get("intent") for m in examples])
    embeddings = EmbeddingCache(ROOT / EMBEDDING_CACHE).embed(shared_encoder(), texts)
    config = SentenceIntentClassifier.get_default_config()
    confidence = np.zeros(len(texts))
    predicted = np.empty(len(texts), dtype=object)
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=42)
    for number, (train, test) in enumerate(folds.split(texts, labels), 1):
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(config["char_ngrams"]), sublinear_tf=True)
        words = TfidfVectorizer(ngram_range=tuple(config["word_ngrams"]), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
        ngrams = lambda idx, f: sparse.hstack([f[0]([texts[i] for i in idx]),  # noqa: E731
                                               f[1]([texts[i] for i in idx])]).tocsr()
        weight = float(config["embedding_weight"])
        model = fit_logistic_regression(embeddings[train] * weight, ngrams(train, (chars.fit_transform, words.fit_transform)),
                                        labels[train], C=config["C"])
        x_test = sparse.hstack([sparse.csr_matrix(embeddings[test] * weight),
                                ngrams(test, (chars.transform, words.transform))]).tocsr()
        probs = model.predict_proba(x_test)
        confidence[test] = probs.max(1)
        predicted[test] = model.classes_[probs.argmax(1)]
        print(f"fold {number}/4 done", file=sys.stderr, flush=True)
    gold_oos = labels == "out_of_scope"
    print("threshold  in-scope acc  oos recall  oos precision")
    for threshold in THRESHOLDS:
        final = np.where(confidence < threshold, "out_of_scope", predicted)
        said_oos = final == "out_of_scope"
        in_acc = (final[~gold_oos] == labels[~gold_oos]).mean()
        recall = said_oos[gold_oos].mean()
        precision = (said_oos & gold_oos).sum() / max(said_oos.sum(), 1)
        print(f"{threshold:9.2f}  {in_acc:12.3f}  {recall:10.3f}  {precision:13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
