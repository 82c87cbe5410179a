"""Text and preference data: text sources, rule-based ground truths, P-SOUPS, the validated
loaders of preference and prompt files."""
