"""Support code for the exercises of the memory and compute notebooks: one
module per technique (``labkit.course.lessons.mempools`` for exercise 04, ...).

Each module gives its exercise what the student's code is checked and measured
with: inputs, a reference, timing. The common parts (``check``, ``quick``, the
TSC) are in ``labkit.course.exercise``, which also holds the support code of
exercises 01, 02 and 14; exercises 03, 13 and 15 have their own modules here
(``zerocopy``, ``rss``, ``lthreads``).
"""
