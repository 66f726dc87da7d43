"""Puppets that bridge kf conversations to other IMs. Not built yet: they arrive with their own issue."""
