"""Human handoff on the WhatsApp channel: routing a customer's messages to the agents while a
person has the chat, and the agent console served beside the bot."""
