"""Many scans, one model load: the runner behind ``hermes segment`` and its HTML report.

``outcome``  what a run is asked to do (``BatchOptions``) and what came of it (reports)
``runner``   plan the cases (folders, shards, finished ones), then read, segment and write them
``outputs``  the files of one case, the output folder, the stats table
``report``   the self-contained HTML page of a run (``--report``)
"""
