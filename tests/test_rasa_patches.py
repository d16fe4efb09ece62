"""The speed-ups of connectors/whatsapp/rasa_patches.py change no decision of Rasa's.

Every customer conversation of tests/conversations/customer_scripts.yml is run through the
trained model in process, with the action server; at every prediction the patched rule search
is compared with Rasa's own, so are the featurized states, and wherever TED was skipped, the
ensemble's winner is computed with TED's real prediction as well and must be the same.
"""
from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
import yaml
from jsonschema import ValidationError

from connectors.whatsapp import rasa_patches
from tests.servers import MODEL, Servers

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "conversations" / "customer_scripts.yml"


def test_an_invalid_action_server_answer_is_refused_as_rasa_refuses_it():
    from rasa.core.actions.action import RemoteAction

    action = RemoteAction("action_x", None)
    assert rasa_patches._validate_action_result(action, {"events": [], "responses": [{"text": "hi"}]})
    with pytest.raises(ValidationError) as patched:
        rasa_patches._validate_action_result(action, {"events": [{"no event": 1}]})
    with pytest.raises(ValidationError) as stock:
        rasa_patches.STOCK["validate_action_result"](action, {"events": [{"no event": 1}]})
    assert patched.value.message == stock.value.message


def test_event_classes_are_found_by_name_as_before():
    from rasa.shared.core.events import Event, SlotSet, UserUttered

    rasa_patches.apply()
    assert Event.resolve_by_type("slot") is SlotSet and Event.resolve_by_type("user") is UserUttered
    assert Event.resolve_by_type("topic") is None
    assert Event.resolve_by_type("no such event", default=SlotSet) is SlotSet
    with pytest.raises(ValueError):
        Event.resolve_by_type("no such event")


def test_rules_are_matched_by_index_wherever_the_pipeline_loads():
    """`rasa train` loads the classifier's module, not the channel: the rule matching comes
    with it (RulePolicy's training checks every story against the rules by prediction)."""
    import subprocess
    import sys
    check = ("from rasa.core.policies.rule_policy import RulePolicy as R; stock = R._get_possible_keys; "
             "import components.sentence_classifier; from connectors.whatsapp import rasa_patches as p; "
             "assert stock is p.STOCK['get_possible_keys'] and R._get_possible_keys is p._get_possible_keys; "
             "assert R._is_rule_applicable is p._is_rule_applicable and R._rule_key_to_state is p._rule_key_to_state; "
             "from rasa.core.actions.action import RemoteAction as A; "
             "assert A._validate_action_result is p.STOCK['validate_action_result']; print('ok')")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_rule_matching_leaves_a_replaced_method_alone(monkeypatch):
    from rasa.core.policies.rule_policy import RulePolicy

    def spy(self, lookup, states):
        return set()

    monkeypatch.setattr(RulePolicy, "_is_rule_applicable", rasa_patches.STOCK["is_rule_applicable"])
    monkeypatch.setattr(RulePolicy, "_get_possible_keys", spy)
    rasa_patches.apply_rule_matching()
    assert RulePolicy._is_rule_applicable is rasa_patches._is_rule_applicable
    assert RulePolicy._get_possible_keys is spy


@pytest.mark.model
def test_the_patched_policies_decide_every_customer_turn_as_rasa_does(tmp_path, monkeypatch):
    from rasa.core.agent import Agent
    from rasa.core.channels.channel import CollectingOutputChannel, UserMessage
    from rasa.core.policies.ensemble import DefaultPolicyPredictionEnsemble
    from rasa.core.policies.rule_policy import RulePolicy
    from rasa.shared.core.domain import Domain
    from rasa.shared.core.trackers import DialogueStateTracker
    from rasa.utils.endpoints import EndpointConfig

    rasa_patches.apply()
    servers = Servers(tmp_path)
    seen = {"searches": 0, "ted_skipped": 0, "ted_ran": 0, "states": 0, "states_resumed": 0}

    def compared_search(self, lookup, states):
        patched = rasa_patches._get_possible_keys(self, lookup, states)
        stock = set(lookup.keys())
        for i, state in enumerate(reversed(states)):
            stock = {k for k in stock if rasa_patches.STOCK["is_rule_applicable"](self, k, i, state)}
        assert patched == stock
        seen["searches"] += 1
        return patched

    gate = rasa_patches._TEDWhenUndecided.__call__

    def compared_gate(self, *args):
        own, deciders = args[:len(self.params)], args[len(self.params):]
        answer = gate(self, *args)
        real = self.node(*own)
        if answer[1] is real[1]:
            seen["ted_ran"] += 1
            return answer
        seen["ted_skipped"] += 1
        others = [p for _, p in deciders]
        skipped = DefaultPolicyPredictionEnsemble._pick_best_policy(copy.deepcopy(others) + [answer[1]])
        ran = DefaultPolicyPredictionEnsemble._pick_best_policy(copy.deepcopy(others) + [real[1]])
        assert (skipped.policy_name, skipped.max_confidence_index) == (ran.policy_name, ran.max_confidence_index)
        return answer

    def compared_states(self, tracker, *args, **kwargs):
        replays = tracker.__dict__.get(rasa_patches._REPLAYS) or {}
        resumed = any(replay.events for replay in replays.values())
        patched = rasa_patches._states_for_tracker_history(self, tracker, *args, **kwargs)
        stock_events = rasa_patches.STOCK["applied_events"](tracker)
        assert [id(e) for e in tracker.applied_events()] == [id(e) for e in stock_events]
        with monkeypatch.context() as stock_tracker:
            stock_tracker.setattr(DialogueStateTracker, "applied_events", rasa_patches.STOCK["applied_events"])
            stock = rasa_patches.STOCK["states_for_tracker_history"](self, tracker, *args, **kwargs)
        assert patched == stock
        seen["states"] += 1
        seen["states_resumed"] += resumed
        return patched

    monkeypatch.setattr(Domain, "states_for_tracker_history", compared_states)
    monkeypatch.setattr(RulePolicy, "_get_possible_keys", compared_search)
    monkeypatch.setattr(rasa_patches._TEDWhenUndecided, "__call__", compared_gate)
    scripts = yaml.safe_load(SCRIPTS.read_text())
    servers.start_actions()
    try:
        async def converse() -> None:
            agent = Agent.load(str(MODEL), action_endpoint=EndpointConfig(
                f"http://127.0.0.1:{servers.action_port}/webhook"))
            for number, script in enumerate(scripts):
                sender = f"{script['persona']}"
                for turn in script["turns"]:
                    if "say" in turn:
                        await agent.handle_message(UserMessage(turn["say"], CollectingOutputChannel(),
                                                               f"{sender}-{number}" if number % 2 else sender))

        asyncio.run(converse())
    finally:
        servers.stop()
    assert seen["searches"] > 100 and seen["ted_skipped"] > 50
    assert seen["states_resumed"] > 100 and seen["states"] > seen["states_resumed"], seen


@pytest.mark.model
def test_ted_loaded_without_a_training_step_is_the_model_rasa_loads(monkeypatch):
    """The same variables with the same values, the same labels' embedding and the same
    prediction for the example Rasa keeps, whichever way the trained TED is loaded."""
    import numpy as np
    from rasa.core.agent import Agent
    from rasa.utils.tensorflow.models import RasaModel

    loaded = []

    def both(cls, model_file_name, model_data_example, predict_data_example=None, finetune_mode=False, *args, **kwargs):
        fast = rasa_patches._load_model(cls, model_file_name, model_data_example, predict_data_example,
                                        finetune_mode, *args, **kwargs)
        stock = rasa_patches.STOCK["model_load"](cls, model_file_name, model_data_example, predict_data_example,
                                                 finetune_mode, *args, **kwargs)
        loaded.append((fast, stock, predict_data_example))
        return fast

    rasa_patches.apply()
    monkeypatch.setattr(RasaModel, "load", classmethod(both))
    Agent.load(str(MODEL))
    assert loaded, "the model has no TensorFlow policy to load"
    for fast, stock, example in loaded:
        stock_weights = {w.name: w.numpy() for w in stock.weights}
        fast_weights = {w.name: w.numpy() for w in fast.weights}
        assert fast_weights.keys() == stock_weights.keys() and len(fast_weights) > 10
        for name, value in stock_weights.items():
            assert np.array_equal(fast_weights[name], value), name
        assert np.array_equal(fast.all_labels_embed.numpy(), stock.all_labels_embed.numpy())
        fast_out, stock_out = _arrays(fast.run_inference(example)), _arrays(stock.run_inference(example))
        assert fast_out.keys() == stock_out.keys() and "similarities" in fast_out, sorted(fast_out)
        for key, value in stock_out.items():
            assert np.allclose(fast_out[key], value, atol=1e-6), key


def _arrays(outputs, prefix=""):
    """A prediction's numeric outputs by flat key (diagnostic data included)."""
    import numpy as np

    flat = {}
    for key, value in outputs.items():
        if isinstance(value, dict):
            flat.update(_arrays(value, f"{prefix}{key}."))
        elif value is not None:
            flat[prefix + key] = np.asarray(value)
    return flat


def test_featurized_history_follows_every_kind_of_rewrite():
    """The states kept on a tracker between predictions are taken up again only while its
    applied events start with the ones they were made from: after an undo, a restart or a
    form's happy path folding its steps, they are made again, as Rasa makes them."""
    from rasa.shared.core.domain import Domain
    from rasa.shared.core.events import (ActionExecuted, ActionReverted, ActiveLoop, Restarted, SessionStarted,
                                         SlotSet, UserUttered, UserUtteranceReverted)
    from rasa.shared.core.trackers import DialogueStateTracker

    rasa_patches.apply()  # (the cached applied events too)
    domain = Domain.load(str(ROOT / "domain.yml"))
    stock_states = rasa_patches.STOCK["states_for_tracker_history"]
    stock_applied = rasa_patches.STOCK["applied_events"]
    options = [{}, {"ignore_rule_only_turns": True, "rule_only_data": {"slots": ["card_last4"], "active_loops": []}}]

    def said(intent):
        return [UserUttered(intent, {"name": intent, "confidence": 1.0})]

    steps = [
        [ActionExecuted("action_session_start"), SessionStarted(), ActionExecuted("action_listen")],
        said("greet") + [ActionExecuted("utter_greet", hide_rule_turn=True), ActionExecuted("action_listen")],
        said("inform") + [ActionExecuted("statement_form"), ActiveLoop("statement_form"), SlotSet("card_last4", "1234")],
        [ActionExecuted("action_listen")] + said("inform"),
        [ActionExecuted("statement_form")],  # the loop's happy path: applied events fold
        [ActionExecuted("action_listen")] + said("deny"),
        [UserUtteranceReverted()],
        [ActionExecuted("action_listen")] + said("help") + [ActionExecuted("utter_help")],
        [ActionReverted()],
        [Restarted(), ActionExecuted("action_listen")] + said("goodbye"),
    ]
    tracker = DialogueStateTracker("919800000010", domain.slots)
    compared = 0
    for step in steps:
        for event in step:
            tracker.update(event, domain)
            for option in options:
                for _ in range(2):  # made, then taken up again
                    patched = rasa_patches._states_for_tracker_history(domain, tracker, **option)
                    original = DialogueStateTracker.applied_events
                    DialogueStateTracker.applied_events = stock_applied
                    try:
                        stock = stock_states(domain, tracker, **option)
                    finally:
                        DialogueStateTracker.applied_events = original
                    assert patched == stock, (event, option)
                    compared += 1
    assert compared > 40
    assert [id(e) for e in rasa_patches._applied_events(tracker)] == [id(e) for e in stock_applied(tracker)]
