"""A side-effecting action for tests/deploy/test_action_server.py: counts how often it ran."""
from rasa_sdk import Action
from rasa_sdk.events import SlotSet

RUNS = []


class ActionCount(Action):
    def name(self):
        return "action_count"

    async def run(self, dispatcher, tracker, domain):
        RUNS.append(tracker.sender_id)
        dispatcher.utter_message(text=f"run {len(RUNS)}")
        return [SlotSet("runs", len(RUNS))]
