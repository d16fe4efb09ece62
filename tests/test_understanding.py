"""The pieces that read what a customer typed: rule-based entities, dates, secrets, the
sentence encoder, and the generated form rules."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from cardsystem.formatting import hide_secrets
from cardsystem.months import parse_day, shift_period
from components.card_entities import extract
from components.minilm import MiniLMEncoder

TODAY = dt.date(2026, 11, 28)


def entities(text):
    return [(e["entity"], e["value"]) for e in extract(text)]


@pytest.mark.parametrize("text, expected", [
    ("8851 wala", [("card_last4", "8851")]),
    ("the one ending 6392", [("card_last4", "6392")]),
    ("6392", [("card_last4", "6392")]),
    ("block card xx1117", [("card_last4", "1117")]),
    ("around 4.5k at amazon last week", [("amount", "around 4.5k"), ("date", "last week")]),
    ("Rs 4,500 debited on 12/11", [("amount", "Rs 4,500"), ("date", "12/11")]),
    ("swiggy charged me 450 twice on 3rd", [("amount", "450"), ("date", "on 3rd")]),
    ("pay 5k", [("amount", "5k")]),
    ("2 weeks back flipkart 2,999", [("date", "2 weeks back"), ("amount", "2,999")]),
    ("statement for december 2025", [("month", "december 2025")]),
    ("and next month's also", [("month", "next month's")]),
    ("pichle mahine ka statement", [("month", "pichle mahine")]),
    ("may i know my balance", []),
    ("status of dsp-261101-abcd", [("reference_id", "DSP261101ABCD")]),
    ("ref no 4471823 status", [("reference_id", "4471823")]),
])
def test_entities_a_customer_types(text, expected):
    assert entities(text) == expected


def test_a_year_after_a_month_is_not_a_card():
    assert ("card_last4", "2025") not in entities("statement for december 2025")


@pytest.mark.parametrize("text, day, window", [
    ("yesterday", dt.date(2026, 11, 27), 1),
    ("on 3rd", dt.date(2026, 11, 3), 1),
    ("30th", dt.date(2026, 10, 30), 1),           # the 30th has not come yet this month
    ("3 nov", dt.date(2026, 11, 3), 1),
    ("12/11", dt.date(2026, 11, 12), 1),          # day first, as in India
    ("last tuesday", dt.date(2026, 11, 24), 1),
    ("2 weeks back", dt.date(2026, 11, 14), 4),
    ("last week", dt.date(2026, 11, 21), 4),
    ("the 5th of october", dt.date(2026, 10, 5), 1),
])
def test_days_a_customer_means(text, day, window):
    assert parse_day(text, TODAY) == (day, window)


def test_no_day_in_a_plain_description():
    assert parse_day("swiggy 450", TODAY) is None
    assert shift_period("2026-12", 1) == "2027-01" and shift_period("2026-01", -1) == "2025-12"


@pytest.mark.parametrize("text, kinds, kept", [
    ("my card 4111 1111 1111 1111 is lost", ["card number"], "1111"),
    ("card 1234 5678 9012 3456 stolen", ["card number"], "3456"),   # a typo'd number is still a card number
    ("my dob is 12/03/1985", ["date of birth"], "my"),
    ("otp is 482913", ["OTP"], ""),
    ("cvv 123", ["CVV"], ""),
    # what a stranger typed that got through before: digits after the card, letters stuck to it, OTP after it
    ("4111111111111111 321", ["card number"], "XXXX-XXXX-XXXX-1111 [more digits hidden]"),
    ("my card 4111 1111 1111 1111 321 exp 12/29", ["card number"], "XXXX-XXXX-XXXX-1111"),
    ("5500000000000004 7", ["card number"], "XXXX-XXXX-XXXX-0004"),
    ("card4111111111111111x", ["card number"], "cardXXXX-XXXX-XXXX-1111x"),
    ("5500-0000-0000-0004 otp 482913", ["card number", "OTP"], "XXXX-XXXX-XXXX-0004 [otp hidden]"),
    ("482913 is my otp", ["OTP"], ""),
    ("my aadhaar is 4991 1866 5246", ["Aadhaar number"], "my aadhaar is"),
])
def test_secrets_are_hidden(text, kinds, kept):
    hidden, found = hide_secrets(text)
    assert found == kinds and kept in hidden
    assert not any(len(chunk) >= 5 and chunk.isdigit() for chunk in hidden.replace("-", " ").split())
    assert "321" not in hidden and "482913" not in hidden and " 7" not in hidden  # a CVV, an OTP, a stray digit


@pytest.mark.parametrize("text", ["statement for 12/11", "pay 5000", "block card ending 4821", "call me on 9876543210",
                                  "call me on 919800000001"])  # a phone number is no Aadhaar (its check digit fails)
def test_ordinary_numbers_are_not_secrets(text):
    assert hide_secrets(text) == (text, [])


def test_sentence_encoder_knows_paraphrase():
    encoder = MiniLMEncoder()
    texts = ["my card was stolen", "someone took my wallet with the credit card", "what is the weather today"]
    vectors = np.stack([v for _, v in encoder.encode([t.split() for t in texts])])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.4 > similarity[0, 2]
    one_words, one = encoder.encode_one(texts[0].split())
    assert one_words.shape == (4, encoder.dimensions)
    assert float(one @ vectors[0]) > 0.999  # the single-message path (TensorFlow, maybe bfloat16) agrees


def test_form_rules_are_generated_from_their_tables():
    from tools.form_rules import main

    assert main(["--check"]) == 0, "run `python -m tools.form_rules`"


def _intent_problem():
    rng = np.random.default_rng(7)
    texts = [f"{verb} my {thing} {extra}" for verb in ("show", "block", "pay", "check", "what is")
             for thing in ("balance", "card", "bill", "points", "statement") for extra in ("", "pls", "now", "today")]
    labels = [t.split()[-2] if t.split()[-1] in ("pls", "now", "today") else t.split()[-1] for t in texts]
    dense = rng.standard_normal((len(texts), 16)) / 4 + np.array([hash(l) % 7 for l in labels])[:, None] / 10
    from sklearn.feature_extraction.text import TfidfVectorizer
    ngrams = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True).fit_transform(texts)
    return dense, ngrams, np.array(labels)


def test_fast_logistic_regression_is_sklearns():
    """The intent classifier's fit is sklearn's multinomial LogisticRegression, only faster."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from components.sentence_classifier import fit_logistic_regression
    dense, ngrams, labels = _intent_problem()
    ours = fit_logistic_regression(dense, ngrams, labels, C=10.0)
    features = sparse.hstack([sparse.csr_matrix(dense), ngrams]).tocsr()
    theirs = LogisticRegression(C=10.0, max_iter=3000).fit(features, labels)
    assert list(ours.classes_) == list(theirs.classes_) and len(ours.classes_) == 5
    assert ours.coef_.shape == theirs.coef_.shape and ours.intercept_.shape == theirs.intercept_.shape
    assert np.abs(ours.predict_proba(features) - theirs.predict_proba(features)).max() < 1e-4
    assert np.abs(ours.coef_ - theirs.coef_).max() < 1e-2 * np.abs(theirs.coef_).max()
    assert (ours.predict(features) == labels).mean() == (theirs.predict(features) == labels).mean() > 0.9


def test_fast_logistic_regression_refuses_what_cannot_be_fitted():
    from components.sentence_classifier import fit_logistic_regression
    dense, ngrams, labels = _intent_problem()
    with pytest.raises(ValueError, match="at least 2 intents"):
        fit_logistic_regression(dense, ngrams, ["balance"] * len(labels), C=10.0)
    with pytest.raises(ValueError, match="n-gram rows"):
        fit_logistic_regression(dense[:-1], ngrams, labels[:-1], C=10.0)


def test_a_loaded_classifier_has_its_encoder_traced_before_the_first_message(tmp_path, monkeypatch):
    """Tracing the encoder's graph takes 2-3 s: at load, not on the first customer's message."""
    import contextlib
    import joblib
    from components import minilm
    from components.sentence_classifier import SentenceIntentClassifier

    joblib.dump({"stored": "model"}, tmp_path / "sentence_classifier.joblib")

    class Storage:
        @contextlib.contextmanager
        def read_from(self, resource):
            yield tmp_path

    monkeypatch.setattr(minilm, "_shared", None)
    component = SentenceIntentClassifier.load({}, Storage(), None, None)
    assert component.model == {"stored": "model"}
    assert minilm._shared is not None and minilm._shared._compiled is not None
    monkeypatch.setattr(minilm, "_shared", None)
    (tmp_path / "sentence_classifier.joblib").unlink()
    assert SentenceIntentClassifier.load({}, Storage(), type("R", (), {"name": "x"})(), None).model is None
    assert minilm._shared is None  # nothing to serve: no 90 MB encoder
