"""Platform glue: the Flower internals we touch (pinned and checked), processes, secrets,
app signing and run folders. The method (shared/unikd) never imports it."""
