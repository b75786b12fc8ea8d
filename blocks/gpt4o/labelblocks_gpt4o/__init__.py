"""GPT-4o image labels, box re-labeling and box validation for labelblocks."""
