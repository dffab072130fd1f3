"""Checkers for the self-paced labs in labs/: one module per lab, each with ``check``.

Each module holds the lab's contract (what the reader writes), its ``check`` (a grader built
on :mod:`toylib.labs.grading`), and nothing of the solution: the reference solutions live in the lab
notebooks (hidden on the site), and known-wrong solutions live in the tests.
"""
