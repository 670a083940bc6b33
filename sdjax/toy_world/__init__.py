"""A procedural world of toy subjects (coloured, patterned shapes on named backgrounds) with exact
masks, and an evaluator that checks generated images of it: a setting where learning to place a
given subject in a given box can be measured."""
