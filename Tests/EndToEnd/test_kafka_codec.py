"""Kafka codec against kafka-python's own encoder and decoder (the differential test), and the
generated code against the schemas it comes from (the regeneration test).

Real components: kafka-python 3.x (its protocol classes are built from the same Apache Kafka
JSON schemas Sluice's codec is generated from, but its encoder and decoder are its own
code) and the `sluice debug kafka-codec` command (Sluice's generated schemas and codec).

For every API whose requests name topics, every version from 0 to the newest (the versions
above what the Tansu broker speaks, such as Produce v12-13 and Fetch v18, are covered only
here: bytes from kafka-python's encoder), requests and responses are filled with values in
every field (two elements in every array, tagged fields set, nullable fields null in one
element), encoded by kafka-python, decoded by Sluice, compared field by field with
kafka-python's own decoding, and written back by Sluice byte for byte. Sluice's answers to
those requests when denied are decoded by kafka-python and must list every topic and
partition with error 29.
"""
import importlib
import json
import pkgutil
import re
import subprocess
import sys
import uuid

import pytest

from conftest import ROOT, SLUICE

kafka = pytest.importorskip("kafka")
from kafka.protocol.api_message import ApiMessage  # noqa: E402
import kafka.protocol as protocol_package  # noqa: E402


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def message_classes():
    for module in pkgutil.walk_packages(protocol_package.__path__, protocol_package.__name__ + "."):
        try:
            importlib.import_module(module.name)
        except Exception:  # noqa: BLE001 - optional modules
            continue
    found = {}
    stack = list(ApiMessage.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        json_schema = getattr(cls, "_json", None)
        if json_schema and getattr(cls, "_class_version", None) is None and json_schema.get("type") in ("request", "response"):
            found[(json_schema["apiKey"], json_schema["type"])] = cls
    return found


CLASSES = message_classes()


def parse_versions(text):
    text = str(text)
    if text == "none":
        return None
    if text.endswith("+"):
        return int(text[:-1]), 10 ** 6
    if "-" in text:
        low, high = text.split("-")
        return int(low), int(high)
    return int(text), int(text)


def in_versions(text, version):
    bounds = parse_versions(text) if text is not None else None
    return bounds is not None and bounds[0] <= version <= bounds[1]


class Filler:
    """Deterministic values for every field of one message version."""

    def __init__(self, version, seed):
        self.version = version
        self.counter = seed

    def next(self):
        self.counter += 1
        return self.counter

    def value(self, field, element_of=None, null_ok=True):
        kind = element_of or field["type"]
        nullable = null_ok and in_versions(field.get("nullableVersions"), self.version)
        n = self.next()
        if kind.startswith("[]"):
            if nullable and n % 7 == 0:
                return None
            return [self.value(field, element_of=kind[2:], null_ok=False) for _ in range(2)]
        if kind == "bitfield":  # kafka-python's view of Metadata's AuthorizedOperations: a set of bits
            return {1, 3, n % 20}
        if kind == "bool":
            return n % 2 == 0
        if kind in ("int8",):
            return n % 100
        if kind in ("int16", "uint16"):
            return n % 30000
        if kind in ("int32", "uint32"):
            return n * 1000 + 7
        if kind == "int64":
            return n * 10 ** 10 + 3
        if kind == "float64":
            return n + 0.5
        if kind == "string":
            if nullable and n % 5 == 0:
                return None
            return f"{field['name'].lower()}-{n}"
        if kind in ("bytes", "records"):
            if nullable and n % 5 == 0:
                return None
            return bytes([n % 256, 1, 2, 3])
        if kind == "uuid":
            return uuid.UUID(int=(n * 0x9E3779B97F4A7C15) % (1 << 128) or 1)
        # a struct (array element or nested)
        return self.struct(field, kind)

    def struct(self, field, kind):
        fields = field.get("fields") or []
        return {f["name"]: self.value(f) for f in fields if in_versions(f["versions"], self.version)}


def build(cls, schema_fields, values, version):
    """kafka-python objects from the filler's dicts (nested classes found on the parent)."""
    kwargs = {}
    for field in schema_fields:
        if field["name"] not in values:
            continue
        value = values[field["name"]]
        kind = field["type"]
        inner = kind[2:] if kind.startswith("[]") else kind
        if field.get("fields") is not None and value is not None:
            nested = getattr(cls, inner)
            if kind.startswith("[]"):
                value = [build(nested, field["fields"], item, version) for item in value]
            else:
                value = build(nested, field["fields"], value, version)
        kwargs[snake(field["name"])] = value
    return cls(**kwargs) if cls is not None else kwargs


def canonical(obj, schema_fields, version, depth=0):
    """kafka-python's decoded object in the shape `sluice debug kafka-codec` prints."""
    out = {}
    for field in schema_fields:
        if not in_versions(field["versions"], version):
            continue
        value = getattr(obj, snake(field["name"]))
        if field["type"] == "bitfield":
            # kafka-python renames Metadata's Cluster/TopicAuthorizedOperations and reads them as sets.
            name = "TopicAuthorizedOperations" if depth else "ClusterAuthorizedOperations"
            out[name] = sum(1 << bit for bit in value) if isinstance(value, set) else value
            continue
        out[field["name"]] = canonical_value(value, field, version, depth)
    return out


def canonical_value(value, field, version, depth=0):
    kind = field["type"]
    if value is None:
        return None
    if kind.startswith("[]"):
        if field.get("fields") is not None:
            return [canonical(item, field["fields"], version, depth + 1) for item in value]
        return [canonical_scalar(item) for item in value]
    if field.get("fields") is not None:
        return canonical(value, field["fields"], version, depth + 1)
    return canonical_scalar(value)


def canonical_scalar(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def resolve_common(schema):
    common = {s["name"]: s["fields"] for s in schema.get("commonStructs", [])}

    def walk(fields):
        for field in fields:
            kind = field["type"]
            inner = kind[2:] if kind.startswith("[]") else kind
            if "fields" not in field and inner in common:
                field["fields"] = common[inner]
            if "fields" in field:
                walk(field["fields"])
    walk(schema["fields"])
    return schema


def topic_api_keys():
    keys = []
    for (key, kind), cls in sorted(CLASSES.items()):
        if kind == "request" and ('"topicName"' in json.dumps(cls._json) or '"TopicId"' in json.dumps(cls._json)):
            keys.append(key)
    return keys


TOPIC_APIS = topic_api_keys()


def cases():
    """Every (kind, key, version) with kafka-python's bytes and its own decoding."""
    lines, expected = [], []
    for key in TOPIC_APIS:
        for kind in ("request", "response"):
            cls = CLASSES[(key, kind)]
            schema = resolve_common(json.loads(json.dumps(cls._json)))
            for version in range(0, cls.max_version + 1):
                filler = Filler(version, seed=key * 1000 + version * 10)
                values = filler.struct({"fields": schema["fields"]}, None)
                message = build(cls[version], schema["fields"], values, version)
                body = message.encode(version=version)
                decoded = cls.decode(body, version=version)
                lines.append(f"{kind} {key} {version} {body.hex()}")
                expected.append((kind, key, version, body, canonical(decoded, schema["fields"], version), decoded))
    return lines, expected


def run_sluice(lines):
    result = subprocess.run([SLUICE, "debug", "kafka-codec"], input="\n".join(lines) + "\n", capture_output=True,
                            text=True, timeout=120, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def referenced_topics(obj, schema_fields, version, names, ids):
    for field in schema_fields:
        if not in_versions(field["versions"], version):
            continue
        value = getattr(obj, snake(field["name"]))
        if value is None:
            continue
        if field.get("entityType") == "topicName":
            for name in (value if isinstance(value, list) else [value]):
                if name is not None and name not in names:
                    names.append(name)
        elif field["name"] == "TopicId" and field["type"] == "uuid":
            if value.int != 0 and str(value) not in ids:
                ids.append(str(value))
        elif field.get("fields") is not None:
            for item in (value if isinstance(value, list) else [value]):
                referenced_topics(item, field["fields"], version, names, ids)


def error_codes(obj, schema_fields, version, out):
    for field in schema_fields:
        if not in_versions(field["versions"], version):
            continue
        value = getattr(obj, snake(field["name"]))
        if field["name"].endswith("ErrorCode") and field["type"] == "int16":
            out.append(value)
        elif field.get("fields") is not None and value is not None:
            for item in (value if isinstance(value, list) else [value]):
                error_codes(item, field["fields"], version, out)


def test_every_topic_api_and_version_decodes_like_kafka_python():
    assert {0, 1, 2, 3, 8, 9, 19, 20}.issubset(TOPIC_APIS), TOPIC_APIS
    lines, expected = cases()
    assert len(lines) > 250
    results = run_sluice(lines)
    assert len(results) == len(expected)
    failures = []
    for (kind, key, version, body, want, _decoded), got in zip(expected, results):
        label = f"{CLASSES[(key, kind)].name} v{version}"
        if not got["ok"]:
            failures.append(f"{label}: {got['error']}")
            continue
        if got["value"] != want:
            failures.append(f"{label}: decoded differently:\n sluice {got['value']}\n python {want}")
        if got["reencoded"] != body.hex():
            failures.append(f"{label}: written back differently")
    assert not failures, "\n".join(failures[:20])


def test_topics_named_by_requests_are_the_ones_kafka_python_sees():
    lines, expected = cases()
    requests = [(line, item) for line, item in zip(lines, expected) if item[0] == "request"]
    results = run_sluice([line for line, _ in requests])
    for (_line, (kind, key, version, _body, _want, decoded)), got in zip(requests, results):
        cls = CLASSES[(key, kind)]
        schema = resolve_common(json.loads(json.dumps(cls._json)))
        names, ids = [], []
        referenced_topics(decoded, schema["fields"], version, names, ids)
        assert got["topics"] == names, f"{cls.name} v{version}"
        assert got["topic_ids"] == ids, f"{cls.name} v{version}"
        if key in (0, 1, 2):
            assert names or ids, f"{cls.name} v{version} names no topic"


def test_denied_answers_decode_in_kafka_python_with_error_29_everywhere():
    lines, expected = cases()
    requests = [(line, item) for line, item in zip(lines, expected) if item[0] == "request"]
    results = run_sluice([line for line, _ in requests])
    failures = []
    for (_line, (kind, key, version, _body, _want, decoded)), got in zip(requests, results):
        response_cls = CLASSES[(key, "response")]
        label = f"{response_cls.name} v{version}"
        denied = bytes.fromhex(got["denied"])
        try:
            answer = response_cls.decode(denied, version=version)
        except Exception as error:  # noqa: BLE001
            failures.append(f"{label}: kafka-python cannot decode Sluice's answer: {error!r}")
            continue
        schema = resolve_common(json.loads(json.dumps(response_cls._json)))
        codes = []
        error_codes(answer, schema["fields"], version, codes)
        nonzero = [code for code in codes if code]
        if any(code not in (29, 30, 31, 53, 0) for code in codes):
            failures.append(f"{label}: unexpected error codes {codes}")
        # Every topic the request named comes back.
        request_schema = resolve_common(json.loads(json.dumps(CLASSES[(key, 'request')]._json)))
        names, ids = [], []
        # Fetch's ForgottenTopicsData (v7+) names topics the answer does not list.
        listed = [f for f in request_schema["fields"] if not (key == 1 and f["name"] == "ForgottenTopicsData")]
        referenced_topics(decoded, listed, version, names, ids)
        if not names and not ids:
            continue  # "every topic" (a null list) or none: nothing to list again
        answered_names, answered_ids = [], []
        referenced_topics(answer, schema["fields"], version, answered_names, answered_ids)
        if not nonzero and not (key == 35 and version < 3):
            # DescribeLogDirs v0-2 answers have no error field at all (its ErrorCode came in v3).
            failures.append(f"{label}: no error code in Sluice's answer to a request naming {names or ids}")
        if key in (0, 1, 2, 3, 8, 9, 19, 20) and not set(names) <= set(answered_names):
            failures.append(f"{label}: topics {names} answered as {answered_names}")
        if key in (0, 1, 3, 20) and not set(ids) <= set(answered_ids):
            failures.append(f"{label}: topic IDs {ids} answered as {answered_ids}")
    assert not failures, "\n".join(failures[:30])


def test_committed_generated_code_is_what_the_schemas_generate():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "kafka-codegen"), "--check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_malformed_bodies_are_refused_not_misread():
    body = "0000000100"  # Produce v0: acks, timeout, then a topic array cut short
    hostile = [
        "request 0 3 ffff0001000003e87fffffff",  # a topic count of 2^31-1 in 12 bytes
        "request 0 9 00000100000003e8ffffffff0f",  # a compact array length past 32 bits
        "request 1 4 " + body,  # truncated
        "request 3 12 02" + "ff" * 3,  # garbage
        "request 3 1 00000001fffe",  # a string length of -2
    ]
    for result in run_sluice(hostile):
        assert result["ok"] is False, result
