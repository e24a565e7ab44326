"""Training data: the Dataset, the chat-template rendering with label masking, and the collator."""
