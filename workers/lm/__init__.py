"""Language models evaluated as lm-evaluation-harness evaluates them (the ``text-generation``
task, ``shared.modeltasks.text_generation``).

``workers.lm.prompts`` builds prompts and draws few-shot examples, ``workers.lm.scoring``
computes log-likelihoods (all choices of an instance from one pass over its context),
``workers.lm.generation`` decodes greedily, and ``workers.lm.engine`` runs the three kinds
(``multiple_choice``, ``generate_answers``, ``perplexity``) and their metrics. The task's
verify, ingest and evaluate functions (``workers.modeltasks``) come next, on top of these.
"""
