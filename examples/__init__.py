"""Example bots: ``wxkf puppet --bot examples.echo:bot`` runs one from a checkout of the repository."""
