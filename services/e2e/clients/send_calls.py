"""Replays a list of Segment calls with Segment's real Python client (segment-analytics-python).

usage: send_calls.py HOST WRITE_KEY < calls.json

calls.json is a JSON array; each item names the client method in "call" (identify, track, alias,
page, screen, group) and passes its keyword arguments as they are spelled by the library
(user_id, anonymous_id, event, properties, traits, previous_id, message_id, ...). "timestamp", when
present, is an ISO 8601 string and is handed to the client as an aware datetime, so the client
serialises it the way an application would.

The client batches, retries and flushes as in production; the script exits 1 if it reported any
delivery error, and prints the number of calls sent.
"""
import json
import sys
from datetime import datetime

from segment.analytics.client import Client

host, write_key = sys.argv[1], sys.argv[2]
calls = json.load(sys.stdin)
errors = []

client = Client(
    write_key,
    host=host,
    on_error=lambda e, batch: errors.append(f"{e!r} ({len(batch)} messages)"),
    max_retries=10,
    # Room for every call: a full queue would drop calls (the client returns False for them).
    max_queue_size=len(calls) + 1,
)

methods = {
    "identify": client.identify,
    "track": client.track,
    "alias": client.alias,
    "page": client.page,
    "screen": client.screen,
    "group": client.group,
}

for item in calls:
    kwargs = dict(item)
    name = kwargs.pop("call")
    if "timestamp" in kwargs:
        kwargs["timestamp"] = datetime.fromisoformat(kwargs["timestamp"].replace("Z", "+00:00"))
    queued, _ = methods[name](**kwargs)
    if not queued:
        errors.append(f"the client did not queue a {name} call")

client.flush()
client.join()

print(f"sent {len(calls)} calls")
if errors:
    print("delivery errors: " + "; ".join(errors), file=sys.stderr)
    sys.exit(1)
