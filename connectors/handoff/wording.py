"""What the channel itself tells a customer during a handoff (the bot's own words are in domain.yml)."""

QUEUE_NOTICE = ("Your message is with our card team. You're number {position} in the queue; the expected wait is "
                "about {wait} minute(s). Type \"{return_word}\" to go back to the assistant.")
AGENT_JOINED = "{agent} from the cardcare card team has joined the chat. Hello!"
TRANSFERRED = "{agent} has passed your chat to {colleague}, who will continue from here."
