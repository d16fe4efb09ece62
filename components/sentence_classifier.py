"""Intent classification on sentence embeddings and character n-grams.

Customers write in their own registers (Indian English, Hinglish, typos, long polite
messages) and ask about products the bot does not serve. A small DIET trained on our few
thousand examples generalised poorly to that; a pretrained sentence encoder
(all-MiniLM-L6-v2, see `components.minilm`) knows paraphrase in English, and character
n-grams catch Hinglish words and misspellings the encoder has never seen. One multinomial
logistic regression over both gives calibrated probabilities, which the FallbackClassifier's
threshold and the explicit `out_of_scope` class turn into "not for me" answers.

Retrieval intents (`faq/fees`, ...) are classes of their own; the message gets the intent
`faq` (with the summed probability of its sub-intents) and the `response_selector` output
that Rasa's `utter_faq` action reads, so no separate ResponseSelector is needed.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Text, Tuple

import joblib
import numpy as np
from scipy import optimize, sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.classifiers.classifier import IntentClassifier
from rasa.nlu.constants import (
    RESPONSE_SELECTOR_PREDICTION_KEY,
    RESPONSE_SELECTOR_PROPERTY_NAME,
    RESPONSE_SELECTOR_RANKING_KEY,
    RESPONSE_SELECTOR_RESPONSES_KEY,
    RESPONSE_SELECTOR_RETRIEVAL_INTENTS,
    RESPONSE_SELECTOR_UTTER_ACTION_KEY,
)
from rasa.shared.constants import UTTER_PREFIX
from rasa.shared.nlu.constants import (
    INTENT,
    INTENT_NAME_KEY,
    INTENT_RANKING_KEY,
    INTENT_RESPONSE_KEY,
    PREDICTED_CONFIDENCE_KEY,
    TEXT,
)
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from components.minilm import MiniLMEncoder, shared_encoder
from connectors.whatsapp import rasa_patches

# Rules matched through an index, the same matches as Rasa's (tests/test_rasa_patches.py):
# RulePolicy's training checks every story against the rules and took 35-40 s of `rasa train`.
rasa_patches.apply_rule_matching()

logger = logging.getLogger(__name__)

RETRIEVAL_SEPARATOR = "/"
EMBEDDING_CACHE = Path(".rasa") / "minilm-embeddings.npz"  # speeds up retraining; safe to delete


def normalise(text: Text) -> Text:
    return " ".join(text.lower().split())


class EmbeddingCache:
    """Sentence embeddings of training texts kept between trainings (keyed by text hash)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.vectors: Dict[str, np.ndarray] = {}
        try:
            with np.load(path) as stored:
                self.vectors = dict(zip(stored["keys"].tolist(), stored["vectors"]))
        except (OSError, KeyError, ValueError):
            self.vectors = {}

    @staticmethod
    def key(text: Text) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def embed(self, encoder: MiniLMEncoder, texts: Sequence[Text]) -> np.ndarray:
        missing = sorted({t for t in texts if self.key(t) not in self.vectors})
        if missing:
            logger.info("Encoding %d new training texts with MiniLM (%d cached).", len(missing), len(texts) - len(missing))
            for text, (_, vector) in zip(missing, encoder.encode([t.split() for t in missing])):
                self.vectors[self.key(text)] = vector
            self.save()
        return np.stack([self.vectors[self.key(t)] for t in texts])

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = np.array(list(self.vectors.keys()))
            tmp = self.path.with_suffix(".tmp.npz")
            np.savez(tmp, keys=keys, vectors=np.stack(list(self.vectors.values())))
            tmp.replace(self.path)
        except OSError as error:  # a read-only checkout still trains, only slower
            logger.debug("Could not keep the embedding cache: %s", error)


def fit_logistic_regression(dense: np.ndarray, ngrams: sparse.spmatrix, labels: Sequence[Text], C: float,
                            max_iter: int = 3000, tol: float = 1e-4) -> LogisticRegression:
    """`LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(hstack([dense, ngrams]), labels)`,
    the same model in half the time.

    The same objective (multinomial cross-entropy summed over examples, plus the squared weights
    over 2C, the intercept not penalised), minimised from zero by the same scipy L-BFGS-B with
    sklearn's options, so the same iterates up to rounding (a probability differs by < 1e-6).
    sklearn multiplies one sparse matrix in which the dense sentence embedding is three quarters
    of the stored values, and transposes it on every gradient; here the embedding block goes
    through BLAS and the n-grams' transpose is built once. What remains is mostly L-BFGS-B's own
    bookkeeping over (features x classes) weights."""
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"an intent classifier needs at least 2 intents, got {len(classes)}")
    dense = np.ascontiguousarray(dense, dtype=np.float64)
    rows = sparse.csr_matrix(ngrams, dtype=np.float64)
    columns = rows.T.tocsr()
    n, width, k = dense.shape[0], dense.shape[1] + rows.shape[1], len(classes)
    if rows.shape[0] != n:
        raise ValueError(f"{n} embeddings but {rows.shape[0]} n-gram rows")
    split, size = dense.shape[1], width * k
    everyone = np.arange(n)

    def loss_and_gradient(w: np.ndarray) -> Tuple[float, np.ndarray]:
        weights, bias = w[:size].reshape(width, k), w[size:]
        raw = dense @ weights[:split] + rows @ weights[split:] + bias
        raw -= raw.max(axis=1, keepdims=True)
        exp = np.exp(raw)
        total = exp.sum(axis=1)
        loss = float((np.log(total) - raw[everyone, y]).sum() + 0.5 / C * np.dot(w[:size], w[:size]))
        residual = exp / total[:, None]
        residual[everyone, y] -= 1.0
        gradient = np.empty_like(w)
        block = gradient[:size].reshape(width, k)
        block[:split] = dense.T @ residual
        block[split:] = columns @ residual
        block += weights / C
        gradient[size:] = residual.sum(axis=0)
        return loss, gradient

    result = optimize.minimize(loss_and_gradient, np.zeros(size + k), method="L-BFGS-B", jac=True,
                               options={"gtol": tol, "maxiter": max_iter})
    if not result.success:
        logger.warning("The intent classifier did not converge in %d iterations (%s): more examples or a "
                       "smaller C.", result.nit, result.message)
    model = LogisticRegression(C=C, max_iter=max_iter, tol=tol)
    model.classes_ = classes
    model.coef_ = np.ascontiguousarray(result.x[:size].reshape(width, k).T)
    model.intercept_ = result.x[size:].copy()
    model.n_iter_ = np.array([result.nit], dtype=np.int32)
    model.n_features_in_ = width
    return model


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER, is_trainable=True)
class SentenceIntentClassifier(GraphComponent, IntentClassifier):
    """Logistic regression over [MiniLM sentence embedding, char and word n-gram TF-IDF]."""

    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        return {
            "C": 10.0,                 # inverse regularisation of the logistic regression
            "embedding_weight": 1.0,   # scale of the sentence embedding beside the n-grams
            "char_ngrams": [2, 5],
            "word_ngrams": [1, 2],
            "ranking_length": 10,
            "cache_size": 4096,        # parsed texts remembered ("yes", "hi", "balance")
            "random_seed": 42,         # (accepted for older configs: L-BFGS is deterministic)
        }

    def __init__(self, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
                 execution_context: ExecutionContext, model: Optional[Dict[Text, Any]] = None) -> None:
        self.config = {**self.get_default_config(), **config}
        self._model_storage = model_storage
        self._resource = resource
        self._execution_context = execution_context
        self.model = model
        self._cache: "OrderedDict[Text, Tuple[np.ndarray, ...]]" = OrderedDict()

    @classmethod
    def create(cls, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
               execution_context: ExecutionContext) -> "SentenceIntentClassifier":
        return cls(config, model_storage, resource, execution_context)

    # -- training ------------------------------------------------------------------------------
    @staticmethod
    def _label(message: Message) -> Optional[Text]:
        return message.get(INTENT_RESPONSE_KEY) or message.get(INTENT)

    def train(self, training_data: TrainingData) -> Resource:
        examples = [m for m in training_data.intent_examples if m.get(TEXT) and self._label(m)]
        if not examples:
            logger.warning("SentenceIntentClassifier: no intent examples; nothing to train.")
            return self._resource
        texts = [normalise(m.get(TEXT)) for m in examples]
        labels = [self._label(m) for m in examples]
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.config["char_ngrams"]), sublinear_tf=True)
        words = TfidfVectorizer(analyzer="word", ngram_range=tuple(self.config["word_ngrams"]), sublinear_tf=True,
                                token_pattern=r"(?u)\b\w+\b")
        embeddings = EmbeddingCache(EMBEDDING_CACHE).embed(shared_encoder(), texts)
        ngrams = sparse.hstack([chars.fit_transform(texts), words.fit_transform(texts)]).tocsr()
        logger.info("Training the intent classifier on %d examples, %d classes, %d features.",
                    len(texts), len(set(labels)), embeddings.shape[1] + ngrams.shape[1])
        classifier = fit_logistic_regression(embeddings * float(self.config["embedding_weight"]), ngrams, labels,
                                             C=float(self.config["C"]))
        responses = {key: value for key, value in (training_data.responses or {}).items()
                     if RETRIEVAL_SEPARATOR in key}
        self.model = {"chars": chars, "words": words, "classifier": classifier, "responses": responses}
        self.persist()
        return self._resource

    # -- prediction -----------------------------------------------------------------------------
    def probabilities(self, text: Text) -> Tuple[np.ndarray, np.ndarray]:
        """(class names, probabilities) for one text; recent texts are answered from a cache."""
        key = normalise(text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        model = self.model
        embedding = shared_encoder().encode_one(key.split())[1]
        weights = self._weights()
        scores = (embedding * float(self.config["embedding_weight"])) @ weights["embedding"] + weights["bias"]
        for name in ("chars", "words"):
            scores += self._ngram_scores(model[name], weights[name], key)
        scores = np.exp(scores - scores.max())
        result = (model["classifier"].classes_, scores / scores.sum())  # = predict_proba, 10x faster
        self._cache[key] = result
        if len(self._cache) > int(self.config["cache_size"]):
            self._cache.popitem(last=False)
        return result

    _analyzers: Dict[int, Any] = {}

    @classmethod
    def _ngram_scores(cls, vectorizer: TfidfVectorizer, weights: np.ndarray, text: Text) -> np.ndarray:
        """`vectorizer.transform([text]) @ weights` for one text, without building a sparse
        matrix (the same sublinear tf-idf, L2-normalised): a third of the time."""
        counts: Dict[int, int] = {}
        vocabulary = vectorizer.vocabulary_
        analyzer = cls._analyzers.get(id(vectorizer))
        if analyzer is None:
            analyzer = cls._analyzers[id(vectorizer)] = vectorizer.build_analyzer()
        for gram in analyzer(text):
            index = vocabulary.get(gram)
            if index is not None:
                counts[index] = counts.get(index, 0) + 1
        if not counts:
            return np.zeros(weights.shape[1])
        indices = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        values = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * vectorizer.idf_[indices]
        values /= np.linalg.norm(values)
        return values @ weights[indices]

    def _weights(self) -> Dict[Text, np.ndarray]:
        """The regression's weights split by feature block, row-major: sklearn's predict_proba
        copies the whole transposed matrix on every call, which cost more than the rest."""
        if getattr(self, "_split", None) is None:
            classifier = self.model["classifier"]
            coef = np.ascontiguousarray(classifier.coef_.T)
            width = self.model["chars"].idf_.shape[0]
            dims = coef.shape[0] - width - self.model["words"].idf_.shape[0]
            self._split = {"embedding": coef[:dims], "chars": np.ascontiguousarray(coef[dims:dims + width]),
                           "words": np.ascontiguousarray(coef[dims + width:]), "bias": classifier.intercept_}
        return self._split

    def is_gibberish(self, text: Text) -> bool:
        """No word the encoder or our training data knows ("asdfgh jkl"): not worth a guess."""
        words = [w for w in re.findall(r"[a-z]+", normalise(text)) if len(w) >= 2]
        if not words or re.search(r"\d", text):
            return False
        known = self.model["words"].vocabulary_
        vocab = shared_encoder().tokenizer.vocab
        return not any(w in known or w in vocab for w in words)

    def process(self, messages: List[Message]) -> List[Message]:
        if not self.model:
            return messages
        for message in messages:
            text = message.get(TEXT) or ""
            if not text.strip() or self.is_gibberish(text):  # (the MessageGuard answers empty messages)
                fallback = {INTENT_NAME_KEY: "nlu_fallback", PREDICTED_CONFIDENCE_KEY: 1.0}
                message.set(INTENT, fallback, add_to_output=True)
                message.set(INTENT_RANKING_KEY, [fallback], add_to_output=True)
                continue
            classes, probs = self.probabilities(text)
            self._annotate(message, classes, probs)
        return messages

    def _annotate(self, message: Message, classes: np.ndarray, probs: np.ndarray) -> None:
        grouped: Dict[Text, float] = {}
        retrieval: Dict[Text, List[Tuple[Text, float]]] = {}
        for name, p in zip(classes.tolist(), probs.tolist()):
            intent, _, _ = name.partition(RETRIEVAL_SEPARATOR)
            grouped[intent] = grouped.get(intent, 0.0) + p
            if RETRIEVAL_SEPARATOR in name:
                retrieval.setdefault(intent, []).append((name, p))
        ranking = sorted(grouped.items(), key=lambda kv: -kv[1])
        top_name, top_confidence = ranking[0]
        message.set(INTENT, {INTENT_NAME_KEY: top_name, PREDICTED_CONFIDENCE_KEY: float(top_confidence)},
                    add_to_output=True)
        message.set(INTENT_RANKING_KEY,
                    [{INTENT_NAME_KEY: n, PREDICTED_CONFIDENCE_KEY: float(c)}
                     for n, c in ranking[:int(self.config["ranking_length"])]], add_to_output=True)
        if retrieval:
            self._select_response(message, retrieval)

    def _select_response(self, message: Message, retrieval: Dict[Text, List[Tuple[Text, float]]]) -> None:
        """The same output a ResponseSelector gives, for every retrieval intent, under the
        intent's own name only: Rasa's `utter_<intent>` looks there first and at "default" only
        when it is missing, so a copy under "default" (as a single ResponseSelector writes) would
        only double what every stored message, tracker read and action call carries."""
        properties = message.get(RESPONSE_SELECTOR_PROPERTY_NAME) or {}
        properties[RESPONSE_SELECTOR_RETRIEVAL_INTENTS] = sorted(retrieval)
        for intent, options in retrieval.items():
            total = sum(p for _, p in options) or 1.0
            options = sorted(options, key=lambda kv: -kv[1])
            best, best_p = options[0]
            utter = UTTER_PREFIX + best
            properties[intent] = {
                RESPONSE_SELECTOR_PREDICTION_KEY: {
                    RESPONSE_SELECTOR_RESPONSES_KEY: self.model["responses"].get(utter, []),
                    PREDICTED_CONFIDENCE_KEY: float(best_p / total),
                    INTENT_RESPONSE_KEY: best,
                    RESPONSE_SELECTOR_UTTER_ACTION_KEY: utter,
                },
                RESPONSE_SELECTOR_RANKING_KEY: [
                    {INTENT_RESPONSE_KEY: n, PREDICTED_CONFIDENCE_KEY: float(p / total)}
                    for n, p in options[:int(self.config["ranking_length"])]
                ],
            }
        message.set(RESPONSE_SELECTOR_PROPERTY_NAME, properties, add_to_output=True)

    # -- storage ---------------------------------------------------------------------------------
    def persist(self) -> None:
        with self._model_storage.write_to(self._resource) as directory:
            joblib.dump(self.model, directory / "sentence_classifier.joblib")

    @classmethod
    def load(cls, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
             execution_context: ExecutionContext, **kwargs: Any) -> "SentenceIntentClassifier":
        try:
            with model_storage.read_from(resource) as directory:
                model = joblib.load(directory / "sentence_classifier.joblib")
        except (ValueError, FileNotFoundError):
            logger.warning("SentenceIntentClassifier: no trained model in '%s'.", resource.name)
            model = None
        component = cls(config, model_storage, resource, execution_context, model)
        if model is not None:  # the encoder loaded and its graph traced now, not on the first customer's
            shared_encoder().encode_one(["hello"])  # message: 2-3 s, past the other workers' 5 s grace in a burst
        return component
