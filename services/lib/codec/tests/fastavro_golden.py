#!/usr/bin/env python3
"""Cross-language golden vectors for Corral's wire format, checked with fastavro.

Usage: fastavro_golden.py SCHEMAS_DIR WORK_DIR

Reads WORK_DIR/<topic>.rust.bin (written by the Rust codec) and WORK_DIR/input.json, then:
  1. checks each record's header: C3 01 + the CRC-64-AVRO fingerprint fastavro computes from
     schemas/<topic>.avsc;
  2. decodes it with fastavro and re-encodes it: the bytes must be identical (same schema, same
     datum; maps keep the order they were read in);
  3. checks decoded values against WORK_DIR/input.json (numbers exact, via the JsonValue
     conversion below);
  4. writes records authored here, independently of the Rust code, to WORK_DIR/<name>.py.bin for
     the Rust side to decode and compare.
Exits non-zero with a message on the first mismatch.
"""
import io
import json
import sys
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
TOPICS = [
    "events.raw", "events.valid", "events.blocked", "events.violations", "events.dlq",
    "events.resolved", "profiles.merges", "audiences.membership", "traits.changes", "definitions",
]
I64 = (-(2**63), 2**63 - 1)


def fail(msg):
    print(f"fastavro golden: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def load(schemas, topic):
    raw = json.loads((schemas / f"{topic}.avsc").read_text())
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
    return parse_schema(raw), fp


def decode(parsed, fp, data, what):
    if data[:2] != MAGIC:
        fail(f"{what}: bad magic {data[:2].hex()}")
    if data[2:10] != fp:
        fail(f"{what}: fingerprint {data[2:10].hex()} != fastavro's {fp.hex()}")
    buf = io.BytesIO(data[10:])
    rec = fastavro.schemaless_reader(buf, parsed)
    if buf.read():
        fail(f"{what}: trailing bytes")
    return rec


def encode(parsed, fp, rec):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, rec)
    return MAGIC + fp + buf.getvalue()


def from_jv(j):
    """corral.v1.JsonValue (as fastavro decodes it) -> plain JSON value."""
    v = j["v"]
    if isinstance(v, dict):
        if set(v) == {"decimal"} and isinstance(v["decimal"], str):  # JsonBigNumber
            t = v["decimal"]
            return int(t) if t.lstrip("-").isdigit() else float(t)
        return {k: from_jv(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_jv(x) for x in v]
    return v


def to_jv(x):
    """Plain JSON value -> corral.v1.JsonValue, choosing union branches explicitly."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return {"v": x}
    if isinstance(x, int):
        if I64[0] <= x <= I64[1]:
            return {"v": x}
        return {"v": ("corral.v1.JsonBigNumber", {"decimal": str(x)})}
    if isinstance(x, float):
        return {"v": x}
    if isinstance(x, list):
        return {"v": [to_jv(i) for i in x]}
    return {"v": {k: to_jv(v) for k, v in x.items()}}


def same_json(a, b):
    """Equality that also tells 1 from 1.0 and 0.0 from -0.0."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


STRING_FIELDS = ["userId", "anonymousId", "groupId", "previousId", "event", "name", "category",
                 "timestamp", "originalTimestamp", "sentAt", "receivedAt", "channel"]
FREE_FORM = ["properties", "traits", "context", "integrations", "version"]


def message_from_segment(space_id, payload):
    """The same mapping as SegmentMessage::from_segment_json, written independently."""
    p = dict(payload)
    m = {"space_id": space_id, "type": p.pop("type"), "messageId": p.pop("messageId")}
    extra = {}
    for f in STRING_FIELDS:
        if f in p:
            v = p.pop(f)
            if isinstance(v, str):
                m[f] = v
            else:
                extra[f] = v
    for f in FREE_FORM:
        if f in p:
            m[f] = to_jv(p.pop(f))
    extra.update(p)
    m["extra"] = {k: to_jv(v) for k, v in extra.items()}
    m.update({"source_id": "src-py", "write_key_id": None, "received_at_ms": 1700000000999,
              "client_ip": None})
    return m


def main():
    schemas, work = Path(sys.argv[1]), Path(sys.argv[2])
    expected = json.loads((work / "input.json").read_text())
    schema = {t: load(schemas, t) for t in TOPICS}

    # 1-2: every Rust-encoded record decodes and re-encodes to the same bytes.
    decoded = {}
    for topic in TOPICS:
        data = (work / f"{topic}.rust.bin").read_bytes()
        parsed, fp = schema[topic]
        rec = decode(parsed, fp, data, topic)
        again = encode(parsed, fp, rec)
        if again != data:
            fail(f"{topic}: fastavro re-encoding differs from Rust bytes\n rust {data.hex()}\n py   {again.hex()}")
        decoded[topic] = rec

    # 3: values, exact.
    raw = decoded["events.raw"]
    track = expected["track"]
    for f in FREE_FORM:
        if f not in track:
            if raw[f] is not None:
                fail(f"events.raw {f}: absent in the payload but decoded as {raw[f]!r}")
            continue
        if not same_json(from_jv(raw[f]), track[f]):
            fail(f"events.raw {f}: {from_jv(raw[f])!r} != {track[f]!r}")
    for f in ["messageId", "userId", "event", "timestamp"]:
        if raw[f] != track[f]:
            fail(f"events.raw {f}: {raw[f]!r} != {track[f]!r}")
    props = from_jv(raw["properties"])
    if props["big_int"] != 2**64 - 1 or props["neg"] != -(2**63) or props["tiny"] != 5e-324:
        fail(f"events.raw: numbers not exact: {props}")
    dlq = decoded["events.dlq"]
    want = expected["dead_letter"]
    for k, v in want.items():
        got = dlq[k]
        if isinstance(got, bytes):
            got = list(got)
        if k == "failed_at_ms":
            got = int(got.timestamp() * 1000) if hasattr(got, "timestamp") else got
        if got != v:
            fail(f"events.dlq {k}: {got!r} != {v!r}")

    # 4: records authored here.
    parsed, fp = schema["events.raw"]
    msg = message_from_segment("space-py", track)
    (work / "message.py.bin").write_bytes(encode(parsed, fp, msg))
    parsed, fp = schema["events.dlq"]
    dl = {"space_id": "space-py", "service": "python", "origin_topic": "corral.events.raw",
          "origin_partition": 2147483647, "origin_offset": -(2**63), "key": None,
          "value": bytes(range(256)), "error": "ünïcödé ✓", "reason": "decode_error",
          "failed_at_ms": 1700000000123}
    (work / "dead_letter.py.bin").write_bytes(encode(parsed, fp, dl))
    print(f"fastavro golden: ok (fastavro {fastavro.__version__}, {len(TOPICS)} topics)")


if __name__ == "__main__":
    main()
