"""AudioSet (AST) audio tagging for labelblocks."""
