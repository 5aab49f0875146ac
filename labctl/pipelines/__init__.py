"""Pipelines and sweeps: plan every stage's runs up front (``plan``), then advance as parents
end (``advance``); ``view`` reads them.

``run-pipeline`` records the pipeline and one ``created`` run per stage (per
point for a sweep stage) in one transaction, then calls ``advance``, which
is also what the advancer reactor calls whenever a run of the pipeline ends:

* a waiting run whose parent stages all succeeded is submitted, its stage
  inputs resolved to the parents' content-addressed outputs (exactly once:
  the submission expects the run stream at its ``created`` version);
* a waiting run with a parent stage that ended any other way ends
  ``dependency_failed``, naming the cause;
* when every run has ended, the pipeline's outcome is recorded.

Cache hits end at submission, so a chain of them resolves within one call.
A sweep (``run-sweep``) is the same machinery: a pipeline whose first stage
has one run per index and whose optional second stage is the aggregate.
"""
