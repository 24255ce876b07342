"""A local, private assistant that answers questions about your documents and cites them.

    from assistant import Assistant
    bot = Assistant.from_folder("corpus")
    answer = bot.ask("What does LoRA train?")
"""

from assistant.answer import Answer, QuestionError, Source, Timings
from assistant.pipeline import Assistant, Conversation
from assistant.prompts import REFUSAL_TEXT
from assistant.settings import Settings

__all__ = ["Answer", "Assistant", "Conversation", "QuestionError", "REFUSAL_TEXT", "Settings", "Source", "Timings"]
