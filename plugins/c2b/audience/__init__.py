"""Audiences: warehouse connections, segment SQL, uid cleaning and the extract to staging."""
