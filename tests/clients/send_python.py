"""Sends every Segment call type with segment-analytics-python to a collector.

usage: send_python.py HOST WRITE_KEY RUN_ID [--gzip] [--count N]

Prints one JSON line per call on stdout with the fields the collector must store unchanged
(`expect`), matched on userId. Exits 1 if the client reported any delivery error.
"""
import json
import sys
from datetime import datetime, timezone

from segment.analytics.client import Client

host, write_key, run = sys.argv[1], sys.argv[2], sys.argv[3]
use_gzip = "--gzip" in sys.argv
count = int(sys.argv[sys.argv.index("--count") + 1]) if "--count" in sys.argv else 200
tag = "py-gz" if use_gzip else "py"
errors = []

client = Client(
    write_key,
    host=host,
    gzip=use_gzip,
    on_error=lambda e, batch: errors.append(f"{e!r} ({len(batch)} messages)"),
    upload_size=100,
    max_retries=10,
)

expected = []


def expect(kind, user_id, **fields):
    expected.append({"type": kind, "userId": user_id, "expect": fields})


def uid(name):
    return f"{run}-{tag}-{name}"


when = datetime(2021, 3, 4, 5, 6, 7, 890000, tzinfo=timezone.utc)
when_text = when.isoformat(timespec="milliseconds")
big = {
    "u64_max": 2**64 - 1,
    "i64_min": -(2**63),
    "above_2_53": 2**53 + 1,
    "max_double": 1.7976931348623157e308,
    "min_subnormal": 5e-324,
    "tenth": 0.1,
    "neg_zero_int": 0,
}
nested = {"order": {"id": "o-1", "items": [{"sku": "ü-1", "qty": 2, "tags": ["a", "é", "日本"]}, {"sku": "x", "qty": None}]},
          "emoji": "🚀✨", "rtl": "שלום", "empty": {}, "list": [], "flag": True}
ctx = {"app": {"name": "Ünïcode App", "version": "1.2.3"}, "locale": "de-DE", "campaign": {"source": "py"}}

u = uid("identify")
client.identify(u, traits={"email": "ada@example.com", "name": "Ada Lovelace", "nested": nested}, context=ctx, timestamp=when)
expect("identify", u, traits={"email": "ada@example.com", "name": "Ada Lovelace", "nested": nested}, context=ctx, timestamp=when_text)

u = uid("track")
client.track(u, "Order Completed ✓", properties={"revenue": 19.99, "big": big, "nested": nested}, context=ctx, timestamp=when, anonymous_id="anon-py-1")
expect("track", u, event="Order Completed ✓", properties={"revenue": 19.99, "big": big, "nested": nested}, context=ctx, timestamp=when_text, anonymousId="anon-py-1")

u = uid("page")
client.page(u, category="Docs", name="Getting Started", properties={"path": "/docs/ü", "title": "Start"})
expect("page", u, name="Getting Started", category="Docs", properties={"path": "/docs/ü", "title": "Start"})

u = uid("screen")
client.screen(u, name="Home", properties={"variant": "B", "n": 3})
expect("screen", u, name="Home", properties={"variant": "B", "n": 3})

u = uid("group")
client.group(u, "grp-ß-1", traits={"name": "Ünïcorp", "employees": 1200, "plan": {"tier": "gold"}})
expect("group", u, groupId="grp-ß-1", traits={"name": "Ünïcorp", "employees": 1200, "plan": {"tier": "gold"}})

u = uid("alias")
client.alias(f"{run}-{tag}-previous", u)
expect("alias", u, previousId=f"{run}-{tag}-previous")

for i in range(count):
    u = uid(f"bulk-{i}")
    client.track(u, "Bulk Event", properties={"i": i, "text": "ünïcödé " * (i % 5)})
    expect("track", u, event="Bulk Event", properties={"i": i, "text": "ünïcödé " * (i % 5)})

client.flush()
client.join()

for e in expected:
    print(json.dumps(e, ensure_ascii=False))
if errors:
    print("delivery errors: " + "; ".join(errors), file=sys.stderr)
    sys.exit(1)
