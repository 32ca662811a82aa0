import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.IOException;
import java.net.ConnectException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.HttpTimeoutException;
import java.nio.file.DirectoryNotEmptyException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.time.LocalDateTime;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ThreadLocalRandom;

/**
 * Walks one connector through its whole lifecycle against the control plane's REST API.
 *
 * <pre>
 * 1. create it with a schedule   2. reschedule it   3. trigger a run and wait for it
 * 4. deactivate it               5. delete it
 * </pre>
 *
 * Configuration comes from the environment; see README.md beside this file. Exits 0 when every
 * step passed, 1 with a message on stderr otherwise.
 */
public final class ConnectorLifecycleExample {

    private static final Set<Integer> RETRY_STATUSES = Set.of(502, 503, 504);
    private static final Set<String> FINISHED_STATES =
            Set.of("COMPLETED", "FAILED", "CRASHED", "CANCELLED");
    private static final Duration RUN_DEADLINE = Duration.ofSeconds(120);
    private static final Duration RUN_POLL_INTERVAL = Duration.ofSeconds(2);
    private static final double BACKOFF_BASE_SECONDS = 0.5;
    private static final double BACKOFF_CAP_SECONDS = 10.0;
    // A server asking for a longer pause than this is better reported than waited for.
    private static final double RETRY_AFTER_CAP_SECONDS = 60.0;

    private static final String SAMPLE_CSV =
            "id,name,email\n1,Ada Lovelace,ada@example.com\n2,Alan Turing,alan@example.com\n";

    private static final ObjectMapper JSON = new ObjectMapper();

    private ConnectorLifecycleExample() {}

    public static void main(String[] args) throws InterruptedException {
        try {
            Config config = Config.fromEnvironment();
            ApiClient client = new ApiClient(config);
            System.out.println("Control plane API: " + config.baseUrl());
            // Unique names, because the API answers 409 to a name its project already has.
            String suffix = LocalDateTime.now().format(DateTimeFormatter.ofPattern(
                    "yyyyMMdd-HHmmss")) + "-" + UUID.randomUUID().toString().substring(0, 6);
            Scaffold scaffold = prepare(client, config, suffix);
            runLifecycle(client, scaffold, suffix);
            cleanUp(client, scaffold);
        } catch (ExampleException error) {
            System.out.flush(); // so the progress so far comes before the failure, even when piped
            System.err.println("\nFAILED: " + error.getMessage());
            System.exit(1);
        }
        System.out.println("\nPASSED: all 5 lifecycle steps"
                + " (create, reschedule, trigger, deactivate, delete)");
    }

    // ---------------------------------------------------------------- the five steps

    private static void runLifecycle(ApiClient client, Scaffold scaffold, String suffix)
            throws InterruptedException {
        System.out.println("\n[1/5] Create the connector with a schedule");
        ObjectNode spec = JSON.createObjectNode()
                .put("name", "Customer Data Pipeline " + suffix)
                .put("description", "Copies customers.csv to out.jsonl every four hours")
                .put("projectId", scaffold.projectId())
                .put("definedSourceId", scaffold.definedSourceId())
                .put("definedDestinationId", scaffold.definedDestinationId())
                .put("schedule", "0 */4 * * *")
                .put("isActive", true);
        spec.putObject("sourceConfigOverride");
        spec.putObject("destinationConfigOverride");
        JsonNode connector = client.call("POST", "/api/v1/connectors", spec, 201, true);
        show(connector, "id", "prefectDeploymentId", "schedule", "nextRunAt");
        expect(has(connector, "id"), "the answer has no id");
        expect(has(connector, "prefectDeploymentId"), "the connector has no deployment");
        expect(text(connector, "schedule").equals("0 */4 * * *"), "the schedule was not stored");
        long connectorId = connector.path("id").asLong();
        String path = "/api/v1/connectors/" + connectorId;

        System.out.println("\n[2/5] Change its schedule");
        connector = client.call("PATCH", path,
                JSON.createObjectNode().put("schedule", "0 */6 * * *"), 200, false);
        show(connector, "id", "prefectDeploymentId", "schedule", "nextRunAt");
        expect(text(connector, "schedule").equals("0 */6 * * *"),
                "the new schedule was not stored");
        expect(has(connector, "prefectDeploymentId"), "the deployment is gone");

        System.out.println("\n[3/5] Trigger a run now and wait for it to finish");
        JsonNode result = client.call("POST", path + "/trigger", null, 200, true);
        show(result, "status", "result", "flowRunId");
        expect(text(result, "status").equals("success"), "the trigger did not succeed");
        expect(has(result, "flowRunId"), "the trigger answered no flowRunId");
        waitForRun(client, connectorId, text(result, "flowRunId"));

        System.out.println("\n[4/5] Deactivate it");
        connector = client.call("PATCH", path,
                JSON.createObjectNode().put("isActive", false), 200, false);
        show(connector, "id", "prefectDeploymentId", "isActive", "nextRunAt");
        expect(!has(connector, "prefectDeploymentId"),
                "the deployment is still there");

        System.out.println("\n[5/5] Delete it");
        client.call("DELETE", path, null, 204, false);
        System.out.println("   204 No Content");
        HttpResponse<String> gone = client.send("GET", path, null, false);
        expect(gone.statusCode() == 404, "GET after DELETE answered " + gone.statusCode());
        System.out.println("   404 " + detail(gone));
    }

    /** Polls the connector's runs until the triggered one finishes; it must complete. */
    private static void waitForRun(ApiClient client, long connectorId, String flowRunId)
            throws InterruptedException {
        String path = "/api/v1/connectors/" + connectorId + "/runs";
        Instant deadline = Instant.now().plus(RUN_DEADLINE);
        while (true) {
            HttpResponse<String> response = client.send("GET", path, null, false);
            // FastAPI's own 404 for an unknown route says just "Not Found"; a missing connector
            // says which one, and is a real failure.
            if (response.statusCode() == 404 && detail(response).equals("Not Found")) {
                System.out.println(
                        "   this API has no /runs route: checking the connector and waiting 5 s");
                client.call("GET", "/api/v1/connectors/" + connectorId, null, 200, false);
                Thread.sleep(5_000);
                return;
            }
            String state = "NOT LISTED YET";
            for (JsonNode run : ApiClient.check("GET", path, response, 200).path("data")) {
                if (text(run, "flowRunId").equals(flowRunId)) {
                    state = text(run, "state").toUpperCase();
                }
            }
            System.out.println("   flowRunId=" + flowRunId + "  state=" + state);
            if (FINISHED_STATES.contains(state)) {
                expect(state.equals("COMPLETED"), "flow run " + flowRunId + " ended " + state);
                return;
            }
            if (Instant.now().isAfter(deadline)) {
                throw new ExampleException("flow run " + flowRunId + " is still " + state
                        + " after " + RUN_DEADLINE.toSeconds() + " s");
            }
            Thread.sleep(RUN_POLL_INTERVAL.toMillis());
        }
    }

    // ---------------------------------------------------------------- what the connector needs

    /**
     * The project, defined source and defined destination the connector needs; {@code files}
     * are those of the source and destination made here, in the project's {@code folder}, which
     * is removed afterwards when empty if it did not exist before ({@code ownFolder}).
     */
    private record Scaffold(long projectId, long definedSourceId, long definedDestinationId,
                            List<String> created, Path folder, List<Path> files,
                            boolean ownFolder) {}

    /** Uses the ids given in the environment; creates whatever is missing, with unique names. */
    private static Scaffold prepare(ApiClient client, Config config, String suffix)
            throws InterruptedException {
        List<String> created = new ArrayList<>(); // paths to DELETE afterwards, newest first

        Long projectId = config.projectId();
        if (projectId == null) {
            JsonNode project = client.call("POST", "/api/v1/projects", JSON.createObjectNode()
                    .put("name", "Lifecycle example " + suffix)
                    .put("description", "Made by the example"), 201, false);
            projectId = project.path("id").asLong();
            created.add(0, "/api/v1/projects/" + projectId);
            show(project, "id", "name");
        }

        // The worker reads and writes a project's files only in the project's folder under its
        // file root, and configs name them relative to it; so the example expects the worker on
        // this machine, with FILES_DIR as its file root.
        Path folder = config.filesDir().resolve(String.valueOf(projectId));
        boolean ownFolder = !Files.exists(folder);
        List<Path> files = new ArrayList<>();
        Long sourceId = config.definedSourceId();
        if (sourceId == null) {
            Path csv = folder.resolve("customers.csv");
            writeFile(csv, SAMPLE_CSV);
            files.add(csv);
            ObjectNode body = JSON.createObjectNode()
                    .put("name", "Customers CSV " + suffix)
                    .put("type", "csv")
                    .put("projectId", projectId);
            body.putObject("config").put("path", "customers.csv");
            JsonNode source = client.call("POST", "/api/v1/defined-sources", body, 201, false);
            sourceId = source.path("id").asLong();
            created.add(0, "/api/v1/defined-sources/" + sourceId);
            show(source, "id", "name", "type");
        }

        Long destinationId = config.definedDestinationId();
        if (destinationId == null) {
            files.add(folder.resolve("out.jsonl")); // the worker writes it
            ObjectNode body = JSON.createObjectNode()
                    .put("name", "Customers JSONL " + suffix)
                    .put("type", "jsonl")
                    .put("projectId", projectId);
            body.putObject("config").put("path", "out.jsonl");
            JsonNode destination =
                    client.call("POST", "/api/v1/defined-destinations", body, 201, false);
            destinationId = destination.path("id").asLong();
            created.add(0, "/api/v1/defined-destinations/" + destinationId);
            show(destination, "id", "name", "type");
        }

        return new Scaffold(projectId, sourceId, destinationId, created, folder, files,
                ownFolder);
    }

    /** Deletes what {@link #prepare} created, so reruns leave nothing behind. */
    private static void cleanUp(ApiClient client, Scaffold scaffold) throws InterruptedException {
        if (!scaffold.created().isEmpty()) {
            System.out.println("\nClean up what the example created");
        }
        for (String path : scaffold.created()) {
            client.call("DELETE", path, null, 204, false);
        }
        for (Path file : scaffold.files()) {
            try {
                Files.deleteIfExists(file);
            } catch (IOException error) {
                System.out.println("   could not remove " + file + ": " + error);
            }
        }
        if (!scaffold.files().isEmpty() && scaffold.ownFolder()) {
            try {
                Files.deleteIfExists(scaffold.folder());
            } catch (DirectoryNotEmptyException error) {
                // Files that are not the example's: they stay, and so does the folder.
            } catch (IOException error) {
                System.out.println("   could not remove " + scaffold.folder() + ": " + error);
            }
        }
    }

    // ---------------------------------------------------------------- HTTP

    /** JSON over HTTP with a timeout on every request and retries of transient failures. */
    private static final class ApiClient {
        private static final String KEEP_ALIVE_PROPERTY = "jdk.httpclient.keepalive.timeout";
        private static final String KEEP_ALIVE_SECONDS = "3";

        private final Config config;
        private final HttpClient http;

        ApiClient(Config config) {
            this.config = config;
            // Drop idle connections before the server does (uvicorn closes them after 5 s):
            // a request sent on a connection the server is closing fails with "header parser
            // received no bytes", which the JDK retries by itself only for GET and HEAD.
            // Read once, when the first client is built; -D on the command line still wins.
            if (System.getProperty(KEEP_ALIVE_PROPERTY) == null) {
                System.setProperty(KEEP_ALIVE_PROPERTY, KEEP_ALIVE_SECONDS);
            }
            this.http = HttpClient.newBuilder()
                    // Plain HTTP/1.1: the default would first offer an h2c upgrade on http://.
                    .version(HttpClient.Version.HTTP_1_1)
                    .connectTimeout(config.requestTimeout())
                    .build();
        }

        /**
         * The API's answer, after retrying connection errors, timeouts, 502, 503 and 504.
         *
         * <p>With {@code idempotent}, the request carries an Idempotency-Key made once here and
         * sent again on every retry, so a server that honours it runs a retried POST only once.
         */
        HttpResponse<String> send(String method, String path, JsonNode body, boolean idempotent)
                throws InterruptedException {
            URI uri = URI.create(config.baseUrl() + path);
            HttpRequest.Builder builder = HttpRequest.newBuilder(uri)
                    .timeout(config.requestTimeout())
                    .header("Accept", "application/json")
                    .method(method, body == null
                            ? HttpRequest.BodyPublishers.noBody()
                            : HttpRequest.BodyPublishers.ofString(body.toString()));
            if (body != null) {
                builder.header("Content-Type", "application/json");
            }
            if (config.authToken() != null) {
                builder.header("Authorization", "Bearer " + config.authToken());
            }
            if (idempotent) {
                builder.header("Idempotency-Key", UUID.randomUUID().toString());
            }
            HttpRequest request = builder.build();

            System.out.println("-> " + method + " " + path);
            int attempts = config.maxRetries() + 1;
            for (int attempt = 1; ; attempt++) {
                String reason;
                double delay;
                try {
                    HttpResponse<String> response =
                            http.send(request, HttpResponse.BodyHandlers.ofString());
                    if (!RETRY_STATUSES.contains(response.statusCode()) || attempt == attempts) {
                        return response;
                    }
                    reason = response.statusCode() + " " + detail(response);
                    Double retryAfter = retryAfter(response);
                    delay = retryAfter != null ? retryAfter : backoff(attempt);
                } catch (IOException error) { // refused, reset, HttpTimeoutException, ...
                    if (attempt == attempts) {
                        throw new ExampleException(method + " " + path + ": no answer from "
                                + config.baseUrl() + " after " + attempts + " attempts: "
                                + describe(error));
                    }
                    reason = describe(error);
                    delay = backoff(attempt);
                }
                System.out.printf("   retry %d/%d in %.1f s: %s%n",
                        attempt, attempts - 1, delay, reason);
                Thread.sleep((long) (delay * 1000));
            }
        }

        /** The decoded JSON of an answer with status {@code expect} (null for 204). */
        JsonNode call(String method, String path, JsonNode body, int expect, boolean idempotent)
                throws InterruptedException {
            return check(method, path, send(method, path, body, idempotent), expect);
        }

        static JsonNode check(String method, String path, HttpResponse<String> response,
                              int expect) {
            int status = response.statusCode();
            if (status != expect) {
                String hint = status == 401 || status == 403
                        ? " (check AUTH_TOKEN: it is missing, expired or lacks the rights for this)"
                        : "";
                throw new ExampleException(method + " " + path + " answered " + status + hint
                        + ": " + detail(response));
            }
            if (status == 204) {
                return null;
            }
            try {
                return JSON.readTree(response.body());
            } catch (IOException error) {
                throw new ExampleException(method + " " + path + " answered " + status
                        + " without JSON");
            }
        }
    }

    private static double backoff(int attempt) {
        // Full jitter: clients that failed together do not all come back at the same moment.
        double ceiling = Math.min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * Math.pow(2, attempt));
        return ThreadLocalRandom.current().nextDouble(0, ceiling);
    }

    /** Seconds the server asked us to wait (delta-seconds or an HTTP date), if it did. */
    private static Double retryAfter(HttpResponse<String> response) {
        String value = response.headers().firstValue("Retry-After").orElse(null);
        if (value == null || value.isBlank()) {
            return null;
        }
        double seconds;
        try {
            seconds = Double.parseDouble(value.trim());
        } catch (NumberFormatException notSeconds) {
            try {
                ZonedDateTime when = ZonedDateTime.parse(value.trim(),
                        DateTimeFormatter.RFC_1123_DATE_TIME);
                seconds = Duration.between(Instant.now(), when.toInstant()).toMillis() / 1000.0;
            } catch (DateTimeParseException notADate) {
                return null;
            }
        }
        return Math.min(Math.max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS);
    }

    /** The API's {@code detail}, or the start of the body when the answer is not the API's JSON. */
    private static String detail(HttpResponse<String> response) {
        String body = response.body() == null ? "" : response.body();
        try {
            JsonNode detail = JSON.readTree(body).get("detail");
            if (detail != null) {
                return detail.isTextual() ? detail.asText() : detail.toString();
            }
        } catch (IOException notJson) {
            // fall through to the raw body
        }
        return body.isEmpty() ? "(empty body)" : body.substring(0, Math.min(500, body.length()));
    }

    private static String describe(IOException error) {
        // HttpClient's exceptions seldom carry a message, so say what they mean.
        if (error instanceof ConnectException) {
            return "cannot connect (refused or unreachable)";
        }
        if (error instanceof HttpTimeoutException) {
            return "no answer within REQUEST_TIMEOUT";
        }
        return error.getMessage() == null ? error.getClass().getSimpleName() : error.toString();
    }

    // ---------------------------------------------------------------- small helpers

    /** A field as text, "null" when it is missing or JSON null. */
    private static String text(JsonNode node, String field) {
        JsonNode value = node == null ? null : node.get(field);
        return value == null || value.isNull() ? "null" : value.asText();
    }

    /** Whether the field is there and not JSON null. */
    private static boolean has(JsonNode node, String field) {
        return node != null && node.hasNonNull(field);
    }

    private static void show(JsonNode answer, String... fields) {
        List<String> parts = new ArrayList<>();
        for (String field : fields) {
            parts.add(field + "=" + text(answer, field));
        }
        System.out.println("   " + String.join("  ", parts));
    }

    private static void expect(boolean condition, String message) {
        if (!condition) {
            throw new ExampleException(message);
        }
    }

    private static void writeFile(Path file, String content) {
        try {
            Files.createDirectories(file.getParent());
            Files.writeString(file, content);
        } catch (IOException error) {
            throw new ExampleException("cannot write " + file + " (FILES_DIR): " + error);
        }
    }

    /** A failure that ends the program with exit code 1. */
    private static final class ExampleException extends RuntimeException {
        private static final long serialVersionUID = 1L;

        ExampleException(String message) {
            super(message);
        }
    }

    /** Settings read from the environment. */
    private record Config(String baseUrl, String authToken, Long projectId, Long definedSourceId,
                          Long definedDestinationId, int maxRetries, Duration requestTimeout,
                          Path filesDir) {

        static Config fromEnvironment() {
            Map<String, String> env = System.getenv();
            String baseUrl = env.getOrDefault("BASE_URL", "http://127.0.0.1:8000")
                    .replaceAll("/+$", "");
            String token = env.get("AUTH_TOKEN");
            Long projectId = number(env, "PROJECT_ID");
            Long sourceId = number(env, "DEFINED_SOURCE_ID");
            Long destinationId = number(env, "DEFINED_DESTINATION_ID");
            if ((sourceId != null || destinationId != null) && projectId == null) {
                // The API refuses a connector whose source or destination is another project's.
                throw new ExampleException(
                        "DEFINED_SOURCE_ID and DEFINED_DESTINATION_ID need PROJECT_ID too");
            }
            Long maxRetries = number(env, "MAX_RETRIES");
            String timeout = env.get("REQUEST_TIMEOUT");
            Duration requestTimeout;
            try {
                requestTimeout = timeout == null || timeout.isEmpty() ? Duration.ofSeconds(30)
                        : Duration.ofMillis((long) (Double.parseDouble(timeout) * 1000));
            } catch (NumberFormatException error) {
                throw new ExampleException("REQUEST_TIMEOUT='" + timeout + "' is not a number");
            }
            if ((maxRetries != null && maxRetries < 0) || requestTimeout.toMillis() <= 0) {
                throw new ExampleException(
                        "MAX_RETRIES must be 0 or more and REQUEST_TIMEOUT more than 0");
            }
            String filesDir = env.get("FILES_DIR");
            return new Config(baseUrl, token == null || token.isEmpty() ? null : token,
                    projectId, sourceId, destinationId,
                    maxRetries == null ? 5 : maxRetries.intValue(), requestTimeout,
                    Path.of(filesDir == null || filesDir.isEmpty() ? ".data/files" : filesDir));
        }

        private static Long number(Map<String, String> env, String name) {
            String value = env.get(name);
            if (value == null || value.isEmpty()) {
                return null;
            }
            try {
                return Long.parseLong(value.trim());
            } catch (NumberFormatException error) {
                throw new ExampleException(name + "='" + value + "' is not a number");
            }
        }
    }
}
