"""The serving logic, Ray-free: what the gRPC ingress and the deployments of ``serve/`` compute, as plain
functions over numpy arrays and bundle runtimes, so it is unit-tested without a cluster.

- ``vectors``: unit rows, standardised scores, the n most similar rows (ties to the lower index).
- ``ranking``: the ranker's answers: candidates cut per user, item scores and next-item probabilities,
  similar items, the preference summary, explanations.
- ``policy``: the slate policy of one bundle version (``PolicyVersion``): selection, clean-up and propensities.
- ``slate``: a Recommend slate's scores and relevance.
- ``search``: Search's blend of text similarity and ranker relevance (dense retrieval), and the scores of an
  answer (``SearchScores``).
- ``request_rules``: a request's ``Rules`` message as ``prefmine.rules.Rules``, and the selection over an RPC's
  candidates (``ruled_top``: more candidates while a category cap leaves fewer than k).
- ``rank``: Rank's candidates and their expected value (probability x bid).
- ``history``: a user's history (items, event types, times: the ranker's inputs) with the request's recent events.
- ``recommend``: Recommend's warm path (candidates, then the policy's slate), which ``prefmine evaluate``'s
  ``served`` row scores.
- ``responses``: the protobuf answers built from item indices and scores.

``serve/`` keeps the wiring: deployments that load a runtime per bundle version and call these, and the ingress
that validates, calls and answers.
"""
