"""Agent assist: spoken numbers, facts, redaction, summaries, knowledge-base answers."""
