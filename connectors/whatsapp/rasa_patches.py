"""Costs Rasa 3.6 pays on every turn, and once at start, removed without changing what it does.

Applied when the WhatsApp channel is imported (`make run`, `make serve`); stock behaviour
otherwise, except the rule matching (`apply_rule_matching`), which the pipeline's classifier
applies wherever Rasa loads it, training included.

* Validating the action server's answer: `RemoteAction._validate_action_result` calls
  `jsonschema.validate`, which checks the (constant) schema itself and builds a validator on
  every call: 10-15 % of the Rasa process's CPU under load (py-spy). Here the validator is
  built once per schema and the same `ValidationError` (best match, same message) is raised
  for an invalid answer.
* Matching rules: `RulePolicy._rule_key_to_state` parses a rule's JSON key behind an LRU cache
  of 1,000 entries, and `_get_possible_keys` walks every key in turn on each prediction. This
  bot has more than 1,000 rule keys, so the cache misses every time: half of a turn's CPU
  went to `json.loads` and to reversing the same lists (cProfile, 100 messages in process).
  Here each key is parsed and reversed once, and the keys are indexed by the action their
  last state follows: a key whose last state follows another action than the conversation's
  cannot match (Rasa's own test rejects it), so only the others are tested, by Rasa's test.
* TED where rules and memoization cannot decide: every prediction runs every policy, and
  TED's forward pass (mostly TensorFlow's Python dispatch) was a third of a turn. The
  ensemble picks the highest confidence, then the highest priority; a rule or a memorized
  story predicts with confidence 1.0 and outranks TED (priority 6 and 3 against 1), so
  whenever one of them is at 1.0, TED's prediction cannot be chosen. Then TED is not run:
  in the prediction graph its node waits for the rule and memoization nodes, and answers
  "no prediction" (all zeros) when one of them decided. Not when the last action was
  rejected (the ensemble then zeroes that action's confidence everywhere, and TED may win),
  and never for UnexpecTEDIntentPolicy. This model has no end-to-end (text) stories, so
  TED's prediction is never an end-to-end one that would outrank the others.
* Loading TED: `RasaModel.load` builds the network's variables by training it for one step on
  one example (`model.fit`), then overwrites them with the saved weights. Tracing that
  training step (gradients, optimizer) was 11-14 s of a worker's 16 s start (cProfile), for
  variables that a forward pass creates as well. Here one eager forward pass on the example
  Rasa keeps for this builds them, the saved weights are read into them (the optimizer's
  state, which only training reads, is left in the file), and the model is then prepared and
  traced for prediction exactly as Rasa does. Not when fine-tuning (that trains) or when the
  model runs eagerly by configuration: then Rasa's own load.
* Featurizing the history: each policy turns the whole tracker into states on each
  prediction (`Domain.states_for_tracker_history`: the tracker replayed from its first event,
  a state made at every action), rules and memoization with different options, and a turn
  predicts two or three times while its tracker only grows at the end: a message's history
  was made into states about five times over (37 % of Rasa's own time per message with 20
  turns kept, in cProfile; 10-15 % of its CPU without the profiler). Here the replay, its
  states and the two variables Rasa's loop carries are kept on the tracker object per set of
  options and taken up where they stopped, as long as the applied events still begin with
  the very events (by identity) they were made from;
  after an undo, a restart or a form's folded happy path they are made again from the start.
  Callers get their own copies (sub-states shared where Rasa's list shares them), and
  `applied_events()` is kept while the tracker's events are unchanged.
* Reading events: `Event.resolve_by_type` walks every subclass of Event for every event of
  every tracker read (70,000 calls per 100 messages). The event classes are fixed once
  imported, so the answer for a type name is kept; unknown names still raise as before.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Dict, List, Text

from jsonschema import ValidationError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

from rasa.core.actions.action import RemoteAction
from rasa.core.policies.memoization import MemoizationPolicy
from rasa.core.policies.policy import PolicyPrediction
from rasa.core.policies.ted_policy import TEDPolicy
from rasa.core.policies.unexpected_intent_policy import UnexpecTEDIntentPolicy
from rasa.engine.runner.dask import DaskGraphRunner
from rasa.shared.core.events import ActionExecuted, ActionExecutionRejected, Event
from rasa.core.policies.rule_policy import PREVIOUS_ACTION, SHOULD_NOT_BE_SET, RulePolicy
from rasa.shared.nlu.constants import ACTION_NAME
from rasa.shared.constants import DOCS_BASE_URL
from rasa.shared.core.domain import Domain
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.utils.tensorflow.constants import LEARNING_RATE, RUN_EAGERLY
from rasa.utils.tensorflow.models import RasaModel

_validators: Dict[type, Any] = {}


def _validator(action: RemoteAction) -> Any:
    """The validator of the action's (constant) response schema, built once per action class."""
    validator = _validators.get(type(action))
    if validator is None:
        schema = action.action_response_format_spec()
        cls = validator_for(schema)
        cls.check_schema(schema)
        validator = _validators[type(action)] = cls(schema)
    return validator


def _validate_action_result(self: RemoteAction, result: Dict[Text, Any]) -> bool:
    error = best_match(_validator(self).iter_errors(result))
    if error is None:
        return True
    error.message += (
        f". Failed to validate Action server response from API, "
        f"make sure your response from the Action endpoint is valid. "
        f"For more information about the format visit "
        f"{DOCS_BASE_URL}/custom-actions"
    )
    raise error


@functools.lru_cache(maxsize=65536)
def _rule_key_to_state(rule_key: Text) -> List[Dict[Text, Any]]:
    return json.loads(rule_key)


@functools.lru_cache(maxsize=65536)
def _reversed_rule_states(rule_key: Text) -> List[Dict[Text, Any]]:
    return list(reversed(_rule_key_to_state(rule_key)))


def _is_rule_applicable(self: RulePolicy, rule_key: Text, turn_index: int, conversation_state: Dict) -> bool:
    """RulePolicy._is_rule_applicable of Rasa 3.6.21, with the parsed and reversed key cached."""
    reversed_rule_states = _reversed_rule_states(rule_key)
    if turn_index >= len(reversed_rule_states):
        return True
    current_previous_action = conversation_state.get(PREVIOUS_ACTION)
    rule_previous_action = reversed_rule_states[turn_index].get(PREVIOUS_ACTION)
    if not rule_previous_action and not current_previous_action:
        return True
    if not rule_previous_action or not current_previous_action:
        return False
    return self._does_rule_match_state(reversed_rule_states[turn_index], conversation_state)


def _last_action(state: Dict) -> Any:
    return (state.get(PREVIOUS_ACTION) or {}).get(ACTION_NAME)


def _key_index(policy: RulePolicy, lookup: Dict[Text, Text]) -> "tuple[Dict[Any, List[Text]], List[Text]]":
    """The keys of `lookup` by the action their last state follows, and those that name none."""
    indexes = policy.__dict__.setdefault("_cardcare_key_index", {})
    held = indexes.get(id(lookup))
    if held is None or held[0] is not lookup or held[1] != len(lookup):
        by_action: Dict[Any, List[Text]] = {}
        anywhere: List[Text] = []
        for key in lookup:
            states = _reversed_rule_states(key)
            action = _last_action(states[0]) if states else None
            if not action or action == SHOULD_NOT_BE_SET:
                anywhere.append(key)
            else:
                by_action.setdefault(action, []).append(key)
        held = indexes[id(lookup)] = (lookup, len(lookup), by_action, anywhere)  # (holds lookup: ids stay unique)
    return held[2], held[3]


def _get_possible_keys(self: RulePolicy, lookup: Dict[Text, Text], states: List[Dict]) -> set:
    """RulePolicy._get_possible_keys of Rasa 3.6.21, testing at the last state only the keys
    that can match it."""
    if not states:
        return set(lookup.keys())
    by_action, anywhere = _key_index(self, lookup)
    reversed_states = list(reversed(states))
    current = reversed_states[0]
    action = _last_action(current)
    candidates = anywhere + by_action.get(action, []) if action else list(lookup)
    possible_keys = {key for key in candidates if self._is_rule_applicable(key, 0, current)}
    for i, state in enumerate(reversed_states[1:], start=1):
        possible_keys = {key for key in possible_keys if self._is_rule_applicable(key, i, state)}
    return possible_keys


STOCK = {  # Rasa's own, for the tests that compare (tests/test_rasa_patches.py)
    "get_possible_keys": RulePolicy._get_possible_keys, "is_rule_applicable": RulePolicy._is_rule_applicable,
    "rule_key_to_state": RulePolicy._rule_key_to_state,
    "validate_action_result": RemoteAction._validate_action_result,
    "states_for_tracker_history": Domain.states_for_tracker_history,
    "applied_events": DialogueStateTracker.applied_events,
}
PREDICT = "predict_action_probabilities"
_stock_build_dask_graph = DaskGraphRunner._build_dask_graph


class _TEDWhenUndecided:
    """The TED node of a prediction graph, run only when no rule or memorized story decided."""

    def __init__(self, node: Any, params: List[Text]) -> None:
        self.node = node
        self.params = params

    def __call__(self, *args: Any) -> Any:
        own, deciders = args[:len(self.params)], args[len(self.params):]
        inputs = {param: value for param, (_, value) in zip(self.params, own)}
        component = getattr(self.node, "_component", None)
        if component is not None and _decided([p for _, p in deciders], inputs.get("tracker")):
            domain = inputs["domain"]
            return self.node._node_name, PolicyPrediction([0.0] * domain.num_actions, type(component).__name__,
                                                          component.priority)
        return self.node(*own)


def _decided(predictions: List[Any], tracker: Any) -> bool:
    if tracker is None:
        return False
    last_action = next((e for e in reversed(tracker.events) if isinstance(e, (ActionExecutionRejected, ActionExecuted))),
                       None)
    if isinstance(last_action, ActionExecutionRejected):
        return False
    return any(isinstance(p, PolicyPrediction) and p.max_confidence >= 1.0 for p in predictions)


def _build_dask_graph(self: DaskGraphRunner, schema: Any) -> Dict[Text, Any]:
    graph = _stock_build_dask_graph(self, schema)
    deciders = [name for name, node in schema.nodes.items()
                if node.fn == PREDICT and issubclass(node.uses, MemoizationPolicy)]  # (RulePolicy is one too)
    if not deciders:
        return graph
    for name, node in schema.nodes.items():
        if node.fn == PREDICT and issubclass(node.uses, TEDPolicy) and not issubclass(node.uses, UnexpecTEDIntentPolicy):
            task = graph[name]
            graph[name] = (_TEDWhenUndecided(task[0], list(node.needs.keys())), *task[1:], *deciders)
    return graph


_stock_resolve_by_type = Event.resolve_by_type
_event_classes: Dict[Text, Any] = {}


def _resolve_by_type(type_name: Text, default: Any = None) -> Any:
    found = _event_classes.get(type_name)
    if found is None:
        found = _stock_resolve_by_type(type_name, None if type_name == "topic" else default)
        if found is None or found is default:  # (only a class found by its name is kept)
            return found
        _event_classes[type_name] = found
    return found


class _Replay:
    """How far one tracker's history was featurized for one set of options: the applied events
    replayed (by identity), the replaying tracker after them, the states of the actions among
    them, and the two variables Rasa's loop carries from one step to the next."""

    __slots__ = ("events", "tracker", "states", "last_ml_action", "hidden")

    def __init__(self, tracker: Any) -> None:
        self.events: List[Any] = []
        self.tracker = tracker.init_copy()
        self.states: List[Dict] = []
        self.last_ml_action: Any = None
        self.hidden = False


_REPLAYS = "_cardcare_replays"  # set on a tracker: its _Replay by options


def _history_state(domain: Domain, replay: _Replay, hide_rule_turn: bool, omit_unset_slots: bool,
                   ignore_rule_only_turns: bool, rule_only_data: Any, states: List[Dict], keep: bool) -> Any:
    """The body of Rasa's loop in `states_for_tracker_history` for the tracker of one step
    (`replay.tracker`); its carried variables are kept in `replay` only when `keep`."""
    tracker, last_ml_action, hidden = replay.tracker, replay.last_ml_action, replay.hidden
    if ignore_rule_only_turns:
        if not hidden:
            last_ml_action = domain._get_prev_action_sub_state(tracker)
        if not tracker.followup_action and not tracker.latest_action_name == tracker.active_loop_name:
            hidden = hide_rule_turn
        if keep:
            replay.last_ml_action, replay.hidden = last_ml_action, hidden
        if hidden:
            return None
    state = domain.get_active_state(tracker, omit_unset_slots=omit_unset_slots)
    if ignore_rule_only_turns:
        domain._remove_rule_only_features(state, rule_only_data)
        if states:
            domain._substitute_rule_only_user_input(state, states[-1])
        if last_ml_action:
            state[PREVIOUS_ACTION] = last_ml_action
    return domain._clean_state(state)


def _copied(states: List[Dict]) -> List[Dict]:
    """The states with their sub-states copied, shared ones shared as in Rasa's (a caller that
    changes a state then changes the one it is shared with, as it would in Rasa's own list)."""
    copies: Dict[int, Dict] = {}
    out = []
    for state in states:
        fresh = {}
        for name, sub in state.items():
            copy_ = copies.get(id(sub))
            if copy_ is None:
                copy_ = copies[id(sub)] = dict(sub)
            fresh[name] = copy_
        out.append(fresh)
    return out


_APPLIED = "_cardcare_applied"  # set on a tracker: its events as last read and their applied events
_stock_applied_events = DialogueStateTracker.applied_events


def _applied_events(self: DialogueStateTracker) -> List[Any]:
    events = self.events
    last = events[-1] if events else None
    cached = self.__dict__.get(_APPLIED)
    if cached is None or cached[0] is not events or cached[1] != len(events) or cached[2] is not last:
        cached = self.__dict__[_APPLIED] = (events, len(events), last, _stock_applied_events(self))
    return list(cached[3])


def _states_for_tracker_history(self: Domain, tracker: Any, omit_unset_slots: bool = False,
                                ignore_rule_only_turns: bool = False, rule_only_data: Any = None) -> List[Dict]:
    applied = tracker.applied_events()
    key = (id(self), omit_unset_slots, ignore_rule_only_turns,
           None if rule_only_data is None else json.dumps(rule_only_data, sort_keys=True, default=str))
    replays = tracker.__dict__.get(_REPLAYS)
    if replays is None:
        replays = tracker.__dict__[_REPLAYS] = {}
    replay = replays.get(key)
    done = len(replay.events) if replay is not None else 0
    if replay is None or done > len(applied) or any(a is not b for a, b in zip(replay.events, applied)):
        replay = replays[key] = _Replay(tracker)  # first time, or the history was rewritten: from the start
        done = 0
    for event in applied[done:]:
        if isinstance(event, ActionExecuted):
            state = _history_state(self, replay, event.hide_rule_turn, omit_unset_slots, ignore_rule_only_turns,
                                   rule_only_data, replay.states, keep=True)
            if state is not None:
                replay.states.append(state)
        replay.tracker.update(event)
        replay.events.append(event)
    states = list(replay.states)
    last = _history_state(self, replay, False, omit_unset_slots, ignore_rule_only_turns, rule_only_data, states,
                          keep=False)
    if last is not None:
        states.append(last)
    return _copied(states)


_stock_model_load = RasaModel.load.__func__


def _load_model(cls: type, model_file_name: Text, model_data_example: Any, predict_data_example: Any = None,
                finetune_mode: bool = False, *args: Any, **kwargs: Any) -> Any:
    """RasaModel.load of Rasa 3.6.21 for prediction, with the variables built by a forward pass
    instead of a training step."""
    config = kwargs.get("config", {})
    if finetune_mode or not predict_data_example or config.get(RUN_EAGERLY):
        return _stock_model_load(cls, model_file_name, model_data_example, predict_data_example, finetune_mode,
                                 *args, **kwargs)
    import tensorflow as tf
    from rasa.utils.train_utils import create_data_generators

    model = cls(*args, **kwargs)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.get(LEARNING_RATE, 0.001)), run_eagerly=False)
    generator, _ = create_data_generators(model_data=predict_data_example, batch_sizes=1, epochs=1, shuffle=False)
    batch_in = next(iter(generator))[0]
    model._training = False
    model.prepare_for_predict()  # (eager: creates the variables the labels' side uses)
    model.batch_predict(batch_in)  # (and the dialogue's)
    status = model.load_weights(model_file_name)  # (checks that the saved weights matched)
    if status is not None:
        status.expect_partial()  # the optimizer's slots stay in the file: only training reads them
    model.prepared_for_prediction = False  # prepared again below, with the loaded weights
    model._tf_predict_step = None
    model.run_inference(predict_data_example)  # (as Rasa: traces the prediction function once)
    return model


STOCK["model_load"] = _stock_model_load


def apply_rule_matching() -> None:
    """The rule matching alone. Training needs it too: RulePolicy checks every story and rule
    against the learned rules, one prediction per action (93 % of its training time in py-spy,
    a third of that in `json.loads`). components/sentence_classifier.py applies it when Rasa
    loads the pipeline, so `rasa train`, `rasa test` and `rasa shell` match rules this way.
    A method someone else has already replaced (a test's spy) is left as it is."""
    for name, ours in (("rule_key_to_state", staticmethod(_rule_key_to_state)),
                       ("is_rule_applicable", _is_rule_applicable), ("get_possible_keys", _get_possible_keys)):
        if getattr(RulePolicy, "_" + name) is STOCK[name]:
            setattr(RulePolicy, "_" + name, ours)


def apply() -> None:
    RemoteAction._validate_action_result = _validate_action_result
    apply_rule_matching()
    DaskGraphRunner._build_dask_graph = _build_dask_graph
    Event.resolve_by_type = staticmethod(_resolve_by_type)
    RasaModel.load = classmethod(_load_model)
    Domain.states_for_tracker_history = _states_for_tracker_history
    DialogueStateTracker.applied_events = _applied_events


__all__ = ["apply", "ValidationError"]
