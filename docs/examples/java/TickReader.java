/*
 * TickReader: the ticks feedhandler writes to Kafka, read from Java with nothing on the class
 * path but kafka-clients and its own dependencies (lz4, snappy, zstd, slf4j). One file, no
 * build: Java 17's source launcher compiles and runs it.
 *
 *   LIBS=$HOME/.cache/feedhandler/kafka-4.4.0/libs      # bash scripts/kafka.sh libs
 *   java -cp "$LIBS/*" TickReader.java itch.orders itch.trades          # to their current end
 *   java -cp "$LIBS/*" TickReader.java --follow --count 100 itch.trades  # wait for more
 *   java -cp "$LIBS/*" TickReader.java --rate itch.orders                # records/s, ticks/s
 *   java -cp "$LIBS/*" TickReader.java --schema s.jsonl --fixture tests/fixtures/records/raw.jsonl
 *
 * How it knows the bytes: every data topic <prefix><category> has a schema record in the
 * compacted topic <prefix>schema (key: the topic's name), a JSON document with the value
 * format, the format version, and per message type the layout of every field: name, offset,
 * size, ASCII or unsigned integer, byte order, implied decimals (docs/kafka.md, "Value
 * formats"). This reader takes the layouts from there and knows no layout of its own, so it
 * reads whatever the handler describes; what it does know is how each format frames ticks:
 *   struct, raw  one tick per record, `size` bytes;
 *   batched      rows of `row_size` bytes (the session is the record's `session` header);
 *   json         one JSON object per record.
 * `batched` records also carry the header fh.format = "<format>/<version>", checked against
 * the schema. Arrow values (format `arrow`) are not decoded here: Arrow IPC needs Arrow Java's
 * jars; they are refused with one line, as is any format or version this reader does not know.
 *
 * Output: one JSON object per tick: topic, (batched: session,) then every field of the
 * layout in order, alpha fields trimmed, integers as numbers, prices as exact decimal strings
 * ("12.3400"), timestamp in nanoseconds since midnight exchange time. Lines come per partition
 * in feed order; across partitions and topics in arrival order (sort by `sequence` for feed
 * order).
 *
 * Exit status: 0 done; 1 a bug of this reader; 2 bad arguments or an unreadable file; 3 Kafka
 * did not answer, or a topic or its schema record is missing; 4 a record or schema this reader
 * does not decode (unknown format, other version, wrong size, unknown message type). Every
 * failure is one line on stderr.
 */

import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.function.Consumer;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public final class TickReader {
    static final int VERSION = 1;     // the contract version this reader understands
    static final Set<String> FORMATS = Set.of("struct", "raw", "json", "batched");
    static final String FORMAT_HEADER = "fh.format";
    static final int OK = 0, INTERNAL = 1, USAGE = 2, UNAVAILABLE = 3, UNDECODABLE = 4;

    /** A failure the user sees as one line, and the exit status it ends the program with. */
    static final class Failure extends RuntimeException {
        final int status;

        Failure(int status, String message) {
            super(message, null, false, false);
            this.status = status;
        }
    }

    static Failure undecodable(String message) {
        return new Failure(UNDECODABLE, message);
    }

    // ---- the layouts, as the schema record gives them -----------------------------------

    /** One field: where it is (binary formats) and how to read it. */
    record Field(String name, int offset, int size, boolean ascii, ByteOrder order, int decimals) {}

    /** One message type: its fields and, in binary formats, the bytes of a tick (or row). */
    record Layout(char type, int size, List<Field> fields) {}

    /** What a data topic's schema record says: its format and the layout of each type. */
    record TopicFormat(String topic, String format, String marker, Map<Character, Layout> layouts,
                       int typeOffset) {

        static TopicFormat of(Map<String, Object> schema) {
            String topic = text(schema, "topic");
            String format = text(schema, "format");
            int version = number(schema, "version").intValueExact();
            checkMarker(topic, format + "/" + version);
            if (!"feedhandler".equals(schema.get("contract"))) {
                throw undecodable("topic " + topic + ": the schema record is not a feedhandler contract");
            }
            Map<Character, Layout> layouts = new HashMap<>();
            int typeOffset = -1;
            for (Map.Entry<String, Object> entry : object(schema, "layouts").entrySet()) {
                @SuppressWarnings("unchecked")
                Map<String, Object> layout = (Map<String, Object>) entry.getValue();
                List<Field> fields = new ArrayList<>();
                for (Object item : (List<?>) layout.get("fields")) {
                    @SuppressWarnings("unchecked")
                    Map<String, Object> field = (Map<String, Object>) item;
                    String type = text(field, "type");
                    boolean ascii = type.equals("ascii") || type.equals("string");
                    fields.add(new Field(text(field, "name"),
                            field.containsKey("offset") ? number(field, "offset").intValueExact() : -1,
                            field.containsKey("size") ? number(field, "size").intValueExact() : -1,
                            ascii,
                            "big".equals(field.get("byte_order")) ? ByteOrder.BIG_ENDIAN : ByteOrder.LITTLE_ENDIAN,
                            field.containsKey("decimals") ? number(field, "decimals").intValueExact() : -1));
                    if (fields.get(fields.size() - 1).name().equals("message_type")) {
                        int offset = fields.get(fields.size() - 1).offset();
                        if (typeOffset != -1 && offset != typeOffset) {
                            throw undecodable("topic " + topic + ": message types at different offsets");
                        }
                        typeOffset = offset;
                    }
                }
                // `size` for a per-tick value, `row_size` for a batched row, neither for json
                Object size = layout.containsKey("row_size") ? layout.get("row_size") : layout.get("size");
                char messageType = entry.getKey().charAt(0);
                Layout checked = new Layout(messageType,
                        size == null ? -1 : ((BigDecimal) size).intValueExact(), fields);
                if (!format.equals("json")) {
                    checkFits(topic, checked);
                }
                layouts.put(messageType, checked);
            }
            return new TopicFormat(topic, format, format + "/" + version, layouts, typeOffset);
        }

        /** A binary layout must keep every field inside its tick, integers of 1 to 8 bytes. */
        static void checkFits(String topic, Layout layout) {
            for (Field field : layout.fields()) {
                if (field.offset() < 0 || field.size() < 1 || field.offset() + field.size() > layout.size()
                        || (!field.ascii() && field.size() > 8)) {
                    throw undecodable("topic " + topic + ": field " + field.name() + " of type "
                            + layout.type() + " does not fit its " + layout.size() + "-byte layout");
                }
            }
        }

        Layout layout(char messageType) {
            Layout layout = layouts.get(messageType);
            if (layout == null) {
                throw undecodable("message type '" + messageType + "' is not in the schema of " + topic);
            }
            return layout;
        }
    }

    /** Refuse a format or version this reader does not decode. */
    static void checkMarker(String topic, String marker) {
        int slash = marker.lastIndexOf('/');
        String format = slash < 0 ? marker : marker.substring(0, slash);
        String version = slash < 0 ? "" : marker.substring(slash + 1);
        if (format.equals("arrow")) {
            throw undecodable("topic " + topic + ": format " + marker + " (Arrow IPC record batches) is "
                    + "not decoded by this example; read it with pyarrow or Arrow Java");
        }
        if (!FORMATS.contains(format)) {
            throw undecodable("topic " + topic + ": format " + marker + " is not one this reader "
                    + "decodes (" + String.join(", ", FORMATS.stream().sorted().toList()) + ")");
        }
        if (!version.equals(String.valueOf(VERSION))) {
            throw undecodable("topic " + topic + ": format " + marker + " is not version " + VERSION
                    + ", the one this reader decodes");
        }
    }

    // ---- decoding ------------------------------------------------------------------------

    /** A decoded tick: the layout it was read with and each field's value, in layout order
     *  (String for alpha fields, Long for integers: unsigned 64-bit, print them as such). */
    record Tick(String topic, String session, Layout layout, Object[] values) {}

    /** The ticks of one record value. `formatHeader` and `sessionHeader`: the record's
     *  fh.format and session headers, or null. */
    static void decode(TopicFormat format, byte[] value, String formatHeader, String sessionHeader,
                       Consumer<Tick> out) {
        if (value == null) {
            throw undecodable("record without a value");
        }
        if (formatHeader != null) {
            checkMarker(format.topic(), formatHeader);
            if (!formatHeader.equals(format.marker())) {
                throw undecodable("the record says " + formatHeader + ", the schema of " + format.topic()
                        + " says " + format.marker());
            }
        }
        switch (format.format()) {
            case "json" -> out.accept(fromJson(format, value));
            case "batched" -> {
                if (sessionHeader == null) {
                    throw undecodable("batched record without a session header");
                }
                Layout layout = format.layout(typeAt(value, format.typeOffset()));
                if (value.length == 0 || value.length % layout.size() != 0) {
                    throw undecodable("batched value of " + value.length + " bytes is not a whole number of "
                            + "type " + layout.type() + " rows (" + layout.size() + " bytes)");
                }
                for (int row = 0; row < value.length; row += layout.size()) {
                    if (value[row + format.typeOffset()] != layout.type()) {
                        throw undecodable("batched row at byte " + row + " is not of type " + layout.type());
                    }
                    out.accept(new Tick(format.topic(), sessionHeader, layout, fields(layout, value, row)));
                }
            }
            default -> {    // struct, raw: one tick per value
                Layout layout = format.layout(typeAt(value, format.typeOffset()));
                if (value.length != layout.size()) {
                    throw undecodable(format.format() + " value of " + value.length + " bytes, type "
                            + layout.type() + " has " + layout.size());
                }
                out.accept(new Tick(format.topic(), null, layout, fields(layout, value, 0)));
            }
        }
    }

    static char typeAt(byte[] value, int offset) {
        if (value.length <= offset) {
            throw undecodable("value of " + value.length + " bytes ends before its message type");
        }
        return (char) (value[offset] & 0xFF);
    }

    /** The fields of one tick starting at `start`: integers little- or big-endian as their
     *  layout says (raw values keep the ITCH wire's big-endian, 6-byte timestamp). */
    static Object[] fields(Layout layout, byte[] value, int start) {
        ByteBuffer little = ByteBuffer.wrap(value).order(ByteOrder.LITTLE_ENDIAN);
        ByteBuffer big = ByteBuffer.wrap(value).order(ByteOrder.BIG_ENDIAN);
        List<Field> fields = layout.fields();
        Object[] values = new Object[fields.size()];
        for (int i = 0; i < values.length; i++) {
            Field field = fields.get(i);
            int at = start + field.offset();
            if (field.ascii()) {
                values[i] = trimmed(new String(value, at, field.size(), StandardCharsets.ISO_8859_1));
                continue;
            }
            ByteBuffer bytes = field.order() == ByteOrder.LITTLE_ENDIAN ? little : big;
            values[i] = switch (field.size()) {
                case 1 -> (long) (bytes.get(at) & 0xFF);
                case 2 -> (long) (bytes.getShort(at) & 0xFFFF);
                case 4 -> bytes.getInt(at) & 0xFFFF_FFFFL;
                case 8 -> bytes.getLong(at);
                default -> {    // the 6-byte ITCH timestamp of raw values
                    long number = 0;
                    for (int b = 0; b < field.size(); b++) {
                        int index = field.order() == ByteOrder.BIG_ENDIAN ? b : field.size() - 1 - b;
                        number = number << 8 | (value[at + index] & 0xFF);
                    }
                    yield number;
                }
            };
        }
        return values;
    }

    static Tick fromJson(TopicFormat format, byte[] value) {
        Object parsed = Json.parse(new String(value, StandardCharsets.UTF_8));
        if (!(parsed instanceof Map<?, ?> object) || !(object.get("message_type") instanceof String type)
                || type.length() != 1) {
            throw undecodable("json value is not an object with a one-letter message_type");
        }
        Layout layout = format.layout(type.charAt(0));
        Object[] values = new Object[layout.fields().size()];
        for (int i = 0; i < values.length; i++) {
            Field field = layout.fields().get(i);
            Object item = object.get(field.name());
            if (field.ascii() && item instanceof String text) {
                values[i] = text;
            } else if (!field.ascii() && item instanceof BigDecimal number) {
                values[i] = unsigned64(number, field.name());
            } else {
                throw undecodable("json value of type " + type + ": field " + field.name()
                        + (item == null ? " missing" : " is not " + (field.ascii() ? "a string" : "an integer")));
            }
        }
        return new Tick(format.topic(), null, layout, values);
    }

    static long unsigned64(BigDecimal number, String name) {
        try {
            BigInteger integer = number.toBigIntegerExact();
            if (integer.signum() < 0 || integer.bitLength() > 64) {
                throw new ArithmeticException();
            }
            return integer.longValue();
        } catch (ArithmeticException notOne) {
            throw undecodable("json field " + name + " is not an unsigned 64-bit integer: " + number);
        }
    }

    static String trimmed(String text) {
        int end = text.length();
        while (end > 0 && text.charAt(end - 1) == ' ') {
            end--;
        }
        return text.substring(0, end);
    }

    // ---- output --------------------------------------------------------------------------

    static void appendTick(StringBuilder line, Tick tick) {
        line.append("{\"topic\":");
        appendString(line, tick.topic());
        if (tick.session() != null) {
            line.append(",\"session\":");
            appendString(line, trimmed(tick.session()));
        }
        List<Field> fields = tick.layout().fields();
        for (int i = 0; i < fields.size(); i++) {
            Field field = fields.get(i);
            line.append(",\"").append(field.name()).append("\":");
            Object value = tick.values()[i];
            if (value instanceof String text) {
                appendString(line, text);
            } else if (field.decimals() >= 0) {    // a price: its implied decimals made explicit
                BigInteger unscaled = new BigInteger(Long.toUnsignedString((Long) value));
                line.append('"').append(new BigDecimal(unscaled, field.decimals()).toPlainString()).append('"');
            } else {
                line.append(Long.toUnsignedString((Long) value));
            }
        }
        line.append('}');
    }

    static void appendString(StringBuilder line, String text) {
        line.append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c == '"' || c == '\\') {
                line.append('\\').append(c);
            } else if (c < 0x20 || c > 0x7e) {
                line.append(String.format("\\u%04x", (int) c));
            } else {
                line.append(c);
            }
        }
        line.append('"');
    }

    /** Where decoded ticks go: printed as JSON lines, or (--rate) only counted. */
    static final class Sink implements Consumer<Tick> {
        final PrintStream out;
        final StringBuilder line = new StringBuilder(256);
        final boolean countOnly;
        final long limit;
        long records, ticks, integerSum;     // the sum shows that --rate decoded every field
        long firstRecordNanos;               // --rate: when the first record came (JVM and client warm)

        /** `follow`: every line goes out at once (a reader of a live feed waits for it). */
        Sink(boolean countOnly, long limit, boolean follow) {
            this.countOnly = countOnly;
            this.limit = limit;
            out = new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16),
                    follow, StandardCharsets.UTF_8);
        }

        boolean full() {
            return ticks >= limit;
        }

        @Override
        public void accept(Tick tick) {
            if (full()) {
                return;
            }
            ticks++;
            if (countOnly) {
                for (Object value : tick.values()) {
                    if (value instanceof Long number) {
                        integerSum += number;
                    }
                }
                return;
            }
            line.setLength(0);
            appendTick(line, tick);
            out.println(line);
        }
    }

    // ---- reading a live topic ------------------------------------------------------------

    static Properties consumerSettings(String bootstrap, int timeoutMs) {
        Properties settings = new Properties();
        settings.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        settings.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        settings.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        settings.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");   // assigned, no group
        // the handler may write in transactions (exactly-once): skip aborted records
        settings.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        settings.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "10000");
        settings.put(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG, String.valueOf(8 << 20));
        settings.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, String.valueOf(timeoutMs));
        settings.put(ConsumerConfig.REQUEST_TIMEOUT_MS_CONFIG, String.valueOf(timeoutMs));
        return settings;
    }

    /** The schema topic of a data topic <prefix><category>: the prefix runs to the last dot. */
    static String schemaTopicOf(String topic) {
        return topic.substring(0, topic.lastIndexOf('.') + 1) + "schema";
    }

    static List<TopicPartition> partitions(KafkaConsumer<byte[], byte[]> consumer, String topic,
                                           String missing) {
        List<PartitionInfo> infos = consumer.partitionsFor(topic);
        if (infos == null || infos.isEmpty()) {
            throw new Failure(UNAVAILABLE, missing);
        }
        return infos.stream().map(p -> new TopicPartition(p.topic(), p.partition())).toList();
    }

    /** Read the assigned partitions from the beginning; stop at the end offsets of this moment
     *  unless following, or once `until` says so. */
    static void readAll(KafkaConsumer<byte[], byte[]> consumer, List<TopicPartition> partitions,
                        boolean follow, java.util.function.BooleanSupplier until,
                        Consumer<ConsumerRecord<byte[], byte[]>> each) {
        consumer.assign(partitions);
        consumer.seekToBeginning(partitions);
        Map<TopicPartition, Long> end = follow ? Map.of() : consumer.endOffsets(partitions);
        Set<TopicPartition> reading = new HashSet<>(partitions);
        while (!until.getAsBoolean() && (follow || !reading.isEmpty())) {
            reading.removeIf(p -> !follow && consumer.position(p) >= end.get(p));
            for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(200))) {
                each.accept(record);
            }
        }
    }

    static Map<String, TopicFormat> readSchemas(KafkaConsumer<byte[], byte[]> consumer, List<String> topics) {
        Map<String, byte[]> latest = new HashMap<>();   // compacted: the newest value per key wins
        for (String schemaTopic : topics.stream().map(TickReader::schemaTopicOf).distinct().toList()) {
            readAll(consumer, partitions(consumer, schemaTopic, "no schema topic " + schemaTopic
                    + " describes " + String.join(", ", topics)), false, () -> false, record -> {
                if (record.key() != null) {
                    latest.put(new String(record.key(), StandardCharsets.UTF_8), record.value());
                }
            });
        }
        Map<String, TopicFormat> formats = new HashMap<>();
        for (String topic : topics) {
            byte[] schema = latest.get(topic);
            if (schema == null) {
                throw new Failure(UNAVAILABLE, "no schema record for " + topic + " in " + schemaTopicOf(topic));
            }
            formats.put(topic, schemaOf(schema, "the schema record of " + topic));
        }
        return formats;
    }

    @SuppressWarnings("unchecked")
    static TopicFormat schemaOf(byte[] json, String where) {
        try {
            return TopicFormat.of((Map<String, Object>) Json.parse(new String(json, StandardCharsets.UTF_8)));
        } catch (ClassCastException | IllegalArgumentException | ArithmeticException | NullPointerException bad) {
            throw undecodable(where + " is not a schema this reader understands: " + bad.getMessage());
        }
    }

    static String header(ConsumerRecord<byte[], byte[]> record, String name) {
        Header header = record.headers().lastHeader(name);
        return header == null ? null : new String(header.value(), StandardCharsets.ISO_8859_1);
    }

    static void readLive(String bootstrap, List<String> topics, boolean follow, int timeoutMs, Sink sink) {
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerSettings(bootstrap, timeoutMs))) {
            Map<String, TopicFormat> formats = readSchemas(consumer, topics);
            List<TopicPartition> partitions = new ArrayList<>();
            for (String topic : topics) {
                partitions.addAll(partitions(consumer, topic, "no such topic: " + topic));
            }
            readAll(consumer, partitions, follow, sink::full, record -> {
                if (sink.records++ == 0) {
                    sink.firstRecordNanos = System.nanoTime();
                }
                try {
                    decode(formats.get(record.topic()), record.value(), header(record, FORMAT_HEADER),
                            header(record, "session"), sink);
                } catch (Failure failure) {
                    throw new Failure(failure.status, record.topic() + " partition " + record.partition()
                            + " offset " + record.offset() + ": " + failure.getMessage());
                }
            });
            sink.out.flush();
        } catch (org.apache.kafka.common.errors.TimeoutException timeout) {
            throw new Failure(UNAVAILABLE, "Kafka at " + bootstrap + " did not answer within "
                    + timeoutMs / 1000 + " s");
        } catch (KafkaException error) {
            throw new Failure(UNAVAILABLE, "Kafka at " + bootstrap + ": " + error.getMessage());
        }
    }

    // ---- reading a fixture file (tests/fixtures/records/*.jsonl) -----------------------------

    /** Records of a fixture file, one JSON object per line with the value and headers in hex;
     *  `schemaFile` holds schema records, one JSON document per line, as <prefix>schema does. */
    @SuppressWarnings("unchecked")
    static void readFixture(Path fixture, Path schemaFile, Sink sink) throws IOException {
        Map<String, TopicFormat> formats = new HashMap<>();
        int number = 0;
        for (String line : Files.readAllLines(schemaFile)) {
            number++;
            if (!line.isBlank()) {
                TopicFormat format = schemaOf(line.getBytes(StandardCharsets.UTF_8), schemaFile + " line " + number);
                formats.put(format.topic(), format);
            }
        }
        number = 0;
        try (BufferedReader lines = Files.newBufferedReader(fixture)) {
            for (String line = lines.readLine(); line != null && !sink.full(); line = lines.readLine()) {
                number++;
                String where = fixture + " line " + number;
                try {
                    Map<String, Object> record = (Map<String, Object>) Json.parse(line);
                    String topic = text(record, "topic");
                    TopicFormat format = formats.get(topic);
                    if (format == null) {
                        throw new Failure(UNAVAILABLE, "no schema record for " + topic + " in " + schemaFile);
                    }
                    Map<String, String> headers = new HashMap<>();
                    if (record.get("headers") instanceof List<?> pairs) {
                        for (Object pair : pairs) {
                            List<Object> nameValue = (List<Object>) pair;
                            headers.put((String) nameValue.get(0), new String(
                                    hex((String) nameValue.get(1)), StandardCharsets.ISO_8859_1));
                        }
                    }
                    sink.records++;
                    decode(format, hex(text(record, "value")), headers.get(FORMAT_HEADER),
                            headers.get("session"), sink);
                } catch (Failure failure) {
                    throw new Failure(failure.status, where + ": " + failure.getMessage());
                } catch (ClassCastException | IllegalArgumentException | NullPointerException bad) {
                    throw undecodable(where + ": not a fixture record: " + bad.getMessage());
                }
            }
        }
        sink.out.flush();
    }

    static byte[] hex(String text) {
        if (text.length() % 2 != 0) {
            throw new IllegalArgumentException("odd number of hex digits");
        }
        byte[] bytes = new byte[text.length() / 2];
        for (int i = 0; i < bytes.length; i++) {
            bytes[i] = (byte) Integer.parseInt(text, 2 * i, 2 * i + 2, 16);
        }
        return bytes;
    }

    // ---- JSON: just enough to read schema records, json values and fixture lines ---------------

    static String text(Map<String, Object> object, String key) {
        if (!(object.get(key) instanceof String value)) {
            throw new IllegalArgumentException("no string \"" + key + "\"");
        }
        return value;
    }

    static BigDecimal number(Map<String, Object> object, String key) {
        if (!(object.get(key) instanceof BigDecimal value)) {
            throw new IllegalArgumentException("no number \"" + key + "\"");
        }
        return value;
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> object(Map<String, Object> object, String key) {
        if (!(object.get(key) instanceof Map<?, ?> value)) {
            throw new IllegalArgumentException("no object \"" + key + "\"");
        }
        return (Map<String, Object>) value;
    }

    /** Objects become LinkedHashMap, arrays List, numbers BigDecimal (exact, so 64-bit
     *  unsigned integers survive), strings String, true/false Boolean, null null. */
    static final class Json {
        private final String text;
        private int at;

        private Json(String text) {
            this.text = text;
        }

        static Object parse(String text) {
            Json json = new Json(text);
            Object value = json.value();
            json.space();
            if (json.at != text.length()) {
                throw json.error("text after the value");
            }
            return value;
        }

        private IllegalArgumentException error(String problem) {
            return new IllegalArgumentException("JSON: " + problem + " at character " + at);
        }

        private void space() {
            while (at < text.length() && " \t\r\n".indexOf(text.charAt(at)) >= 0) {
                at++;
            }
        }

        private boolean next(char c) {
            space();
            if (at < text.length() && text.charAt(at) == c) {
                at++;
                return true;
            }
            return false;
        }

        private void expect(char c) {
            if (!next(c)) {
                throw error("expected '" + c + "'");
            }
        }

        private Object value() {
            space();
            if (at >= text.length()) {
                throw error("unexpected end");
            }
            char c = text.charAt(at);
            if (c == '{') {
                at++;
                Map<String, Object> object = new LinkedHashMap<>();
                if (!next('}')) {
                    do {
                        space();
                        String key = string();
                        expect(':');
                        object.put(key, value());
                    } while (next(','));
                    expect('}');
                }
                return object;
            }
            if (c == '[') {
                at++;
                List<Object> array = new ArrayList<>();
                if (!next(']')) {
                    do {
                        array.add(value());
                    } while (next(','));
                    expect(']');
                }
                return array;
            }
            if (c == '"') {
                return string();
            }
            for (String word : new String[] {"true", "false", "null"}) {
                if (text.startsWith(word, at)) {
                    at += word.length();
                    return word.equals("null") ? null : Boolean.valueOf(word);
                }
            }
            int start = at;
            while (at < text.length() && "+-0123456789.eE".indexOf(text.charAt(at)) >= 0) {
                at++;
            }
            try {
                return new BigDecimal(text.substring(start, at));
            } catch (NumberFormatException notANumber) {
                at = start;
                throw error("unexpected character");
            }
        }

        private String string() {
            if (at >= text.length() || text.charAt(at) != '"') {
                throw error("expected a string");
            }
            StringBuilder out = new StringBuilder();
            for (at++; ; at++) {
                if (at >= text.length()) {
                    throw error("unterminated string");
                }
                char c = text.charAt(at);
                if (c == '"') {
                    at++;
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                char escaped = ++at < text.length() ? text.charAt(at) : 'x';
                switch (escaped) {
                    case '"', '\\', '/' -> out.append(escaped);
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'n' -> out.append('\n');
                    case 'r' -> out.append('\r');
                    case 't' -> out.append('\t');
                    case 'u' -> {
                        if (at + 5 > text.length()) {
                            throw error("short \\u escape");
                        }
                        out.append((char) Integer.parseInt(text, at + 1, at + 5, 16));
                        at += 4;
                    }
                    default -> throw error("bad escape");
                }
            }
        }
    }

    // ---- the command line --------------------------------------------------------------------

    static final String USAGE_LINE = "usage: java -cp \"<kafka libs>/*\" TickReader.java [--bootstrap HOST:PORT] "
            + "[--follow] [--count N] [--rate] [--timeout SECONDS] TOPIC... | --schema FILE --fixture FILE "
            + "[--count N] [--rate]";

    public static void main(String[] args) {
        int status;
        try {
            run(args);
            status = OK;
        } catch (Failure failure) {
            System.err.println("TickReader: " + failure.getMessage());
            status = failure.status;
        } catch (IOException unreadable) {
            System.err.println("TickReader: cannot read " + unreadable.getMessage());
            status = USAGE;
        } catch (RuntimeException bug) {
            System.err.println("TickReader: internal error: " + bug);
            status = INTERNAL;
        }
        System.exit(status);
    }

    static void run(String[] args) throws IOException {
        String bootstrap = "127.0.0.1:19092";
        String fixture = null, schema = null;
        boolean follow = false, rate = false;
        long count = Long.MAX_VALUE;
        int timeoutSeconds = 30;
        List<String> topics = new ArrayList<>();
        for (int i = 0; i < args.length; i++) {
            String arg = args[i];
            switch (arg) {
                case "--follow" -> follow = true;
                case "--rate" -> rate = true;
                case "--bootstrap", "--fixture", "--schema", "--count", "--timeout" -> {
                    if (++i >= args.length) {
                        throw new Failure(USAGE, arg + " needs a value; " + USAGE_LINE);
                    }
                    String value = args[i];
                    switch (arg) {
                        case "--bootstrap" -> bootstrap = value;
                        case "--fixture" -> fixture = value;
                        case "--schema" -> schema = value;
                        case "--count" -> count = positive(arg, value);
                        default -> timeoutSeconds = (int) Math.min(positive(arg, value), 3600);
                    }
                }
                default -> {
                    if (arg.startsWith("-")) {
                        throw new Failure(USAGE, "unknown option " + arg + "; " + USAGE_LINE);
                    }
                    topics.add(arg);
                }
            }
        }
        if ((fixture == null) != (schema == null) || (fixture == null) == topics.isEmpty()) {
            throw new Failure(USAGE, USAGE_LINE);
        }
        Sink sink = new Sink(rate, count, follow);
        long started = System.nanoTime();
        if (fixture != null) {
            readFixture(Path.of(fixture), Path.of(schema), sink);
        } else {
            readLive(bootstrap, topics, follow, timeoutSeconds * 1000, sink);
        }
        long ended = System.nanoTime();
        if (rate) {
            // seconds: from before the consumer is made (schema read included) to the end;
            // reading_seconds: from the first data record on, once the client is up
            double seconds = (ended - started) / 1e9;
            double reading = sink.firstRecordNanos == 0 ? seconds : (ended - sink.firstRecordNanos) / 1e9;
            System.out.printf("{\"records\":%d,\"ticks\":%d,\"seconds\":%.3f,\"reading_seconds\":%.3f,"
                    + "\"records_per_s\":%d,\"ticks_per_s\":%d,\"integer_sum\":%s}%n", sink.records, sink.ticks,
                    seconds, reading, Math.round(sink.records / seconds), Math.round(sink.ticks / seconds),
                    Long.toUnsignedString(sink.integerSum));
        }
    }

    static long positive(String option, String value) {
        try {
            long number = Long.parseLong(value);
            if (number >= 1) {
                return number;
            }
        } catch (NumberFormatException notANumber) {
            // said below
        }
        throw new Failure(USAGE, option + " must be a whole number of at least 1, not '" + value + "'");
    }
}
