"""The scenarios, one module each, named by what they measure; ``ORDER`` and ``TITLES`` name them
by their number in issue 6, the number the command line (``--only``) and the report use.

=====  ===========================  ==================================================================
1      ``ingest_throughput``        gRPC ``IngestAlert``, a new incident per alert, against no-op gRPC
2      ``storm``                    the same with one dedup key for all
3      ``webhook``                  HTTP webhook, one alert per request, against no-op aiohttp and AM
4      ``batched``                  100 alerts per gRPC call and per HTTP request, against AM
4b     ``streaming``                client-streaming ``IngestAlerts`` against no-op streaming
5      ``ingest_to_page_latency``   open-loop ingest -> the page's arrival at a webhook receiver
6      ``escalation_lag``           pending escalation steps seeded in SQL -> their pages' lag
7      ``growth``                   CPU per alert, RSS and Redis memory against open alerts
8      ``fair_ingest``              one tenant's steady webhook alerts and pages while another floods
9      ``sender_cost``              CPU per alert of a preset and a mapped sender against the plain webhook
=====  ===========================  ==================================================================

``comparison`` holds what 1-4b share (a target against its baseline in one run), ``paging`` what
5 and 6 share (the receiver, a paging server, the pages' latencies).
"""

ORDER = ["1", "2", "3", "4", "4b", "5", "6", "7", "8", "9"]
TITLES = {
    "1": "gRPC IngestAlert, distinct dedup keys (every alert a new incident)",
    "2": "gRPC IngestAlert, one dedup key (an alert storm)",
    "3": "HTTP webhook, one alert per request (wrk)",
    "4": "Batched ingest, 100 alerts per call/request",
    "4b": "Client-streaming IngestAlerts, one alert per message",
    "5": "Ingest -> first page (p50/p99) at half the maximum rate",
    "6": "Escalation lag with 100,000 pending steps",
    "7": "Growth: CPU per alert, RSS and Redis memory vs open alerts",
    "8": "Fair ingest: tenant B's webhook alerts and pages while tenant A floods (issue 19)",
    "9": "Sender cost: Alertmanager preset and mapped webhook vs plain webhook, 100 per request (issue 20)",
}
