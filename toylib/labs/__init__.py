"""The labs' graders: one module per lab (named like its chapter), each with ``check``.

Each grader module holds the lab's contract (what the reader writes) and its ``check``, built
on :mod:`toylib.labs.grading` (cases, shrinking, reports that say "done" or "not done: cases
passed: k of n" with the smallest failing case and its replay line). :mod:`toylib.labs.faults`
holds the faults a grader injects (processes that die for real and restart from their
database). Reference and independently written correct solutions live in
:mod:`toylib.labs.solutions` (the lab notebooks show them from there, hidden on the site);
known-wrong solutions live in the tests (``tests/test_lab_chNN_*.py``).
"""
