"""Many scans, one model load: the runner behind ``hermes segment`` and its HTML report.

``runner``  plan the cases (folders, shards, skipping finished ones), segment, write, summarise
``report``  the self-contained HTML page of a run (``--report``)
"""
