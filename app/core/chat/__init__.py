"""Conversations as trees: edits and regenerations are sibling branches."""

from app.core.chat.conversations import Conversation, ConversationStore, Message

__all__ = ["Conversation", "ConversationStore", "Message"]
