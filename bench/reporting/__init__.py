"""The report of a harness run: ``summary`` (median and min-max over runs), ``goals`` (the targets
of issue 6, judged on the summaries), ``tables`` (the Markdown), ``output`` (the JSON and Markdown
files and stdout), ``formats`` (the cells)."""
