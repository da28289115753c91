"""The verbs of :class:`lookalike.project.Project`, grouped by what they do, as mixins:
``catalogue`` (ingest, items, events), ``indexing`` (index, words index), ``queries`` (similar,
search, answer, recommend, look, category-first) and ``analysis`` (train, evaluate, clusters,
duplicates). ``project.py`` composes them; none of them imports ``project.py``."""
