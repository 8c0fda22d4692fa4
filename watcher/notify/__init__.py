"""Alert delivery: routing events to channels, the outbox dispatcher, and the channels."""
