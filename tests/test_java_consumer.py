"""docs/examples/java/TickReader.java, the Java consumer users copy, run with the kafka-clients
jars of scripts/kafka.sh: every committed golden record and a live topic of every format it
reads decode to exactly the ticks Python's feedhandler.consume gives, and what it cannot read
ends in one line and exit status 4 (docs/kafka.md, "Reading from Java")."""

import json
import os
import shutil
import subprocess
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

import record_fixtures as fixtures
from feedhandler.exchange import orderflow
from feedhandler.kafka import consume, contract
from feedhandler.kafka.routing import VALUE_FORMATS, Routes
from feedhandler.wire import itch
from streams import running_simulator
from test_handler import ROOT, run_cli

EXAMPLE = ROOT / "docs" / "examples" / "java" / "TickReader.java"
JAVA_FORMATS = ("struct", "raw", "json", "batched")
REFUSED_FORMATS = ("arrow",)    # Arrow IPC needs Arrow Java: refused with one line (BAD_INPUT)
JAVA_VARIANTS = [v for v, (f, _) in fixtures.VARIANTS.items() if f in JAVA_FORMATS]
UNDECODABLE = 4
COUNT = 3000
SYMBOLS = 10
SEED = 41


def kafka_libs() -> Path | None:
    """The jar directory of scripts/kafka.sh (kafka-clients and its dependencies), if fetched."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "libs"],
                            capture_output=True, text=True)
    return Path(result.stdout.strip()) if result.returncode == 0 else None


LIBS = kafka_libs()
pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None or shutil.which("javac") is None,
                       reason="no java/javac (Java 17+) on PATH"),
    pytest.mark.skipif(LIBS is None, reason="no Kafka jars (fetch them: scripts/kafka.sh fetch)"),
]


def java(*arguments, classes=None, timeout=120):
    """Run TickReader: from the compiled classes, or (None) from its source as users do.
    C1 only and the serial GC: these runs are short, start-up is what they spend."""
    class_path = f"{classes}{os.pathsep}{LIBS}/*" if classes else f"{LIBS}/*"
    program = ["TickReader"] if classes else [str(EXAMPLE)]
    result = subprocess.run(["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp",
                             class_path, *program, *arguments],
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout.splitlines(), result.stderr.splitlines()


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """TickReader compiled once, so that the many short runs skip the source launcher."""
    out = tmp_path_factory.mktemp("tickreader")
    subprocess.run(["javac", "-d", str(out), "-cp", f"{LIBS}/*", str(EXAMPLE)], check=True,
                   capture_output=True, timeout=120)
    return out


# ---- what Python reads ------------------------------------------------------------------------

def expected_tick(topic: str, message_type: str, row) -> dict:
    """A row of consume's arrays as TickReader prints it: alpha fields trimmed, prices as exact
    decimal strings, every other integer as it is."""
    out = {"topic": topic}
    for name in row.dtype.names:
        value = row[name]
        if isinstance(value, bytes):
            out[name] = value.decode("latin-1").rstrip(" ")
            continue
        decimals = contract.price_decimals(message_type, name) \
            if name in itch.DTYPES[message_type].names else None
        out[name] = str(Decimal(int(value)).scaleb(-decimals)) if decimals else int(value)
    return out


def fixture_ticks(variant: str, topic_prefix: str) -> list[dict]:
    """The ticks feedhandler.consume.to_arrays decodes from a fixture's records (batched: the
    session from the record's header, as consume.read gives it)."""
    value_format = fixtures.VARIANTS[variant][0]
    ticks = []
    for record in fixtures.load(variant):
        value = bytes.fromhex(record["value"])
        headers = dict(record["headers"] or [])
        for message_type, rows in consume.to_arrays([value], value_format).items():
            for row in rows:
                tick = expected_tick(topic_prefix + record["topic"], message_type, row)
                if value_format == "batched":
                    tick["session"] = bytes.fromhex(headers["session"]).decode().rstrip(" ")
                ticks.append(tick)
    return ticks


def by_sequence(ticks) -> dict[int, dict]:
    ticks = list(ticks)
    counts = Counter(t["sequence"] for t in ticks)
    repeated = sorted(s for s, n in counts.items() if n > 1)
    assert not repeated, f"sequence numbers more than once: {repeated[:10]}"
    return {t["sequence"]: t for t in ticks}


def schema_lines(value_format: str, prefix: str) -> str:
    """The schema records the handler writes for topics `<prefix><category>`, one per line."""
    records = contract.schema_records(value_format, Routes.by_category(prefix).topic_of_type)
    return "".join(value.decode() + "\n" for value in records.values())


# ---- (a) the golden records -------------------------------------------------------------------

def test_every_value_format_is_decoded_or_refused():
    """A new value format makes this fail until TickReader decodes it or refuses it on purpose."""
    assert set(VALUE_FORMATS) <= set(JAVA_FORMATS) | set(REFUSED_FORMATS)
    assert {fixtures.VARIANTS[v][0] for v in JAVA_VARIANTS} == set(JAVA_FORMATS)


def test_every_fixture_decodes_as_the_python_reader_does(tmp_path):
    """All variants in one run of the source launcher, exactly as users run the file: each
    variant's topics renamed `<variant>.<topic>`, described by that variant's schema."""
    fixture, schema = tmp_path / "records.jsonl", tmp_path / "schema.jsonl"
    with fixture.open("w") as records, schema.open("w") as schemas:
        for variant in JAVA_VARIANTS:
            value_format = fixtures.VARIANTS[variant][0]
            schemas.write(schema_lines(value_format, f"{variant}."))
            for record in fixtures.load(variant):
                records.write(json.dumps({**record, "topic": f"{variant}.{record['topic']}"})
                              + "\n")
    code, out, err = java("--schema", str(schema), "--fixture", str(fixture))
    assert code == 0, err
    got = [json.loads(line) for line in out]
    for variant in JAVA_VARIANTS:
        java_ticks = by_sequence(t for t in got if t["topic"].startswith(f"{variant}."))
        python_ticks = by_sequence(fixture_ticks(variant, f"{variant}."))
        assert sorted(java_ticks) == list(range(fixtures.FIRST_SEQUENCE,
                                                fixtures.FIRST_SEQUENCE + fixtures.COUNT))
        for sequence, tick in python_ticks.items():
            assert java_ticks[sequence] == tick, f"{variant} sequence {sequence}"


def test_rate_mode_decodes_every_field(classes, tmp_path):
    """--rate prints counts instead of ticks; the sum of every integer field it decoded is the
    sum Python's reader gives, so it is not counting undecoded records."""
    schema = tmp_path / "schema.jsonl"
    schema.write_text(schema_lines("batched", ""))
    code, out, err = java("--rate", "--schema", str(schema), "--fixture",
                          str(fixtures.path("batched")), classes=classes)
    assert code == 0, err
    figures = json.loads(out[-1])
    values = [bytes.fromhex(r["value"]) for r in fixtures.load("batched")]
    integers = sum(int(v) for rows in consume.to_arrays(values, "batched").values()
                   for name in rows.dtype.names if rows.dtype[name].kind == "u"
                   for v in rows[name])
    assert (figures["records"], figures["ticks"]) == (len(values), fixtures.COUNT)
    assert figures["integer_sum"] == integers % 2**64


# ---- (b) a live topic of every format ---------------------------------------------------------

@pytest.fixture(scope="module")
def published(kafka):
    """A seeded session published by `feedhandler run` once per format, topics of their own;
    deleted afterwards."""
    from confluent_kafka.admin import AdminClient

    prefixes = {f: f"tj{os.getpid()}.{f}." for f in JAVA_FORMATS}
    with running_simulator(count=COUNT, symbols=SYMBOLS, seed=SEED) as simulator:
        for value_format, prefix in prefixes.items():
            handler = run_cli("run", "--connect", f"127.0.0.1:{simulator.port}",
                              "--bootstrap-servers", kafka, "--topic-prefix", prefix,
                              "--partitions", "3", "--format", value_format, "--quiet")
            _, stderr = handler.communicate(timeout=120)
            assert handler.returncode == 0, stderr
    yield prefixes
    topics = [t for p in prefixes.values() for t in Routes.by_category(p).every_topic]
    admin = AdminClient({"bootstrap.servers": kafka})   # referenced while the futures wait
    for future in admin.delete_topics(topics).values():
        future.exception()


@pytest.mark.kafka
def test_a_live_topic_of_every_format_decodes_as_the_python_reader_does(kafka, published):
    topics = {f: Routes.by_category(p).topics for f, p in published.items()}
    code, out, err = java("--bootstrap", kafka, *(t for ts in topics.values() for t in ts))
    assert code == 0, err
    got = [json.loads(line) for line in out]
    adds = itch.parse(orderflow.generate(COUNT, symbols=SYMBOLS, seed=SEED).data)["A"]
    for value_format, prefix in published.items():
        java_ticks = by_sequence(t for t in got if t["topic"].startswith(prefix))
        assert sorted(java_ticks) == list(range(1, COUNT + 1)), value_format
        routes = Routes.by_category(prefix)
        python_ticks = {}
        for chunk in consume.read(kafka, topics[value_format]):
            for message_type, rows in chunk.items():
                for row in rows:
                    python_ticks[int(row["sequence"])] = expected_tick(
                        routes.topic_of_type[message_type], message_type, row)
        assert sorted(python_ticks) == sorted(java_ticks), value_format
        for sequence, tick in python_ticks.items():
            assert java_ticks[sequence] == tick, f"{value_format} sequence {sequence}"
        # the price's decimals, independently of both readers: the source's integers / 10**4
        java_adds = [t for _, t in sorted(java_ticks.items()) if t["message_type"] == "A"]
        assert [Decimal(t["price"]) for t in java_adds] == \
            [Decimal(int(p)).scaleb(-4) for p in adds["price"]], value_format


# ---- (c) what it cannot read: one line, a documented exit status ------------------------------

def struct_record(message_type="A") -> dict:
    return next(r for r in fixtures.load("struct")
                if chr(bytes.fromhex(r["value"])[18]) == message_type)


def batched_record() -> dict:
    return fixtures.load("batched")[0]


def with_value(record: dict, value: bytes) -> dict:
    return {**record, "value": value.hex()}


def with_header(record: dict, name: str, value: bytes) -> dict:
    headers = [[n, v] for n, v in record["headers"] if n != name]
    return {**record, "headers": [*headers, [name, value.hex()]]}


def schema_of(value_format: str, **changes) -> str:
    lines = []
    for line in schema_lines(value_format, "").splitlines():
        document = {**json.loads(line), **changes}
        if "format" in changes or "version" in changes:
            document["marker"] = f"{document['format']}/{document['version']}"
        lines.append(json.dumps(document))
    return "\n".join(lines) + "\n"


A_VALUE = bytes.fromhex(struct_record()["value"])
BATCHED_VALUE = bytes.fromhex(batched_record()["value"])
JSON_RECORD = fixtures.load("json")[0]

BAD_INPUT = {
    "unknown format": (schema_of("struct", format="avro"), struct_record(),
                       "format avro/1 is not one this reader decodes (batched, json, raw, "
                       "struct)"),
    "arrow": (schema_of("batched", format="arrow"), batched_record(),
              "format arrow/1 (Arrow IPC record batches) is not decoded by this example"),
    "newer version": (schema_of("struct", version=2), struct_record(),
                      "format struct/2 is not version 1, the one this reader decodes"),
    "newer marker in a record": (schema_of("batched"),
                                 with_header(batched_record(), "fh.format", b"batched/2"),
                                 "format batched/2 is not version 1"),
    "marker not the schema's": (schema_of("batched"),
                                with_header(batched_record(), "fh.format", b"struct/1"),
                                "the record says struct/1, the schema of reference says "
                                "batched/1"),
    "truncated struct": (schema_of("struct"), with_value(struct_record(), A_VALUE[:-1]),
                         "struct value of 55 bytes, type A has 56"),
    "cut before the type": (schema_of("struct"), with_value(struct_record(), A_VALUE[:18]),
                            "value of 18 bytes ends before its message type"),
    "unknown type": (schema_of("struct"),
                     with_value(struct_record(), A_VALUE[:18] + b"Z" + A_VALUE[19:]),
                     "message type 'Z' is not in the schema of orders"),
    "partial batched row": (schema_of("batched"),
                            with_value(batched_record(), BATCHED_VALUE + BATCHED_VALUE[:5]),
                            "is not a whole number of type H rows"),
    "json without a field": (schema_of("json"),
                             with_value(JSON_RECORD, bytes.fromhex(JSON_RECORD["value"])
                                        .replace(b'"stock":', b'"stocks":')),
                             "field stock missing"),
    "json not an object": (schema_of("json"), with_value(JSON_RECORD, b"[1,2"),
                           "JSON: expected ']'"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_4(classes, tmp_path, case):
    schema_text, record, complaint = BAD_INPUT[case]
    schema, fixture = tmp_path / "schema.jsonl", tmp_path / "record.jsonl"
    schema.write_text(schema_text)
    fixture.write_text(json.dumps(record) + "\n")
    code, out, err = java("--schema", str(schema), "--fixture", str(fixture), classes=classes)
    assert (code, out, len(err)) == (UNDECODABLE, [], 1), err
    assert err[0].startswith("TickReader: ") and complaint in err[0], err


def test_the_good_records_of_those_cases_decode(classes, tmp_path):
    """The cases above fail for what was changed, not for something else in them."""
    for value_format, record in [("struct", struct_record()), ("batched", batched_record()),
                                 ("json", JSON_RECORD)]:
        schema, fixture = tmp_path / "schema.jsonl", tmp_path / "record.jsonl"
        schema.write_text(schema_of(value_format))
        fixture.write_text(json.dumps(record) + "\n")
        code, out, err = java("--schema", str(schema), "--fixture", str(fixture),
                              classes=classes)
        assert code == 0 and out and not err, (value_format, err)


def test_bad_arguments_are_one_line_and_exit_2(classes):
    for arguments in [(), ("--count", "0", "t.orders"), ("--frobnicate", "t.orders"),
                      ("--schema", "/nonexistent", "--fixture", "/nonexistent")]:
        code, out, err = java(*arguments, classes=classes)
        assert (code, out, len(err)) == (2, [], 1), (arguments, err)
        assert err[0].startswith("TickReader: "), err


@pytest.mark.kafka
def test_unreachable_kafka_and_missing_topics_are_one_line_and_exit_3(classes, kafka,
                                                                       topic_prefix):
    code, out, err = java("--bootstrap", "127.0.0.1:1", "--timeout", "2", "t.orders",
                          classes=classes)
    assert (code, out) == (3, []) and err == ["TickReader: Kafka at 127.0.0.1:1 did not answer "
                                              "within 2 s"], err
    code, out, err = java("--bootstrap", kafka, topic_prefix + "orders", classes=classes)
    assert (code, out) == (3, []) and err == [f"TickReader: no schema topic {topic_prefix}schema "
                                              f"describes {topic_prefix}orders"], err


@pytest.mark.kafka
def test_follow_stops_at_count(classes, kafka, published):
    """--follow does not stop at the end; --count ends it after exactly N ticks."""
    topics = Routes.by_category(published["struct"]).topics
    code, out, err = java("--bootstrap", kafka, "--follow", "--count", "25", *topics,
                          classes=classes, timeout=60)
    assert code == 0 and len(out) == 25, err
    assert all(json.loads(line)["topic"] in topics for line in out)
