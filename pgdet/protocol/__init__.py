"""The paper's Table-1 protocol on any dataset (the ``pgdet-table1`` command, cli.py): train a
baseline, fine-tune it with every method over several seeds, and report each method's gain over
the standard fine-tune run by run.

One job per module: ``methods`` (the rows and the variants a user adds), ``runs`` (the output
folder's layout and the table's rows), ``stages`` (the training and evaluation processes and what
each needs), ``schedule`` (running them ``--jobs`` at a time with a progress display), ``stats``
(the paired t interval), ``bootstrap`` (the test-image bootstrap), ``no_detections`` (runs
without any detection), ``report`` (table1.md / table1.json), ``figures``, ``forest_plot``,
``html_report`` (report.html, also from a saved table1.json that ``saved_table`` reads back) and
``cli``.
"""
