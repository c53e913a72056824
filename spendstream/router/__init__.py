"""Model-cascading router: cheap model for easy queries, escalate for hard ones."""
