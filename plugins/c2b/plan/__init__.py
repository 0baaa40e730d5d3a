"""Plans: the typed model of a plan file, its validation, error wording and message templates."""
