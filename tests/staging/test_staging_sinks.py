"""Alert sinks against real receivers on loopback: a webhook server and moto's SNS server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import boto3
import pytest
from moto.server import ThreadedMotoServer

from staging import Alert, Notification, SinkSpec, SnsSink, WebhookSink, build_sink
from tests.staging.helpers import WebhookReceiver
from tufota_core import InputError, TransportError

ALERT = Alert(
    alert_id=7,
    key="rollout:r1:paused",
    kind="rollout_paused",
    severity="critical",
    summary="rollout r1 paused at wave 1/2 'canary': 2 of 3 failed",
    hardware_id="gw-100",
    rollout_id="r1",
    device_id=None,
    details={"wave": 0},
    opened_at=datetime(2026, 1, 5, tzinfo=UTC),
)
NOTE = Notification(notification_id=42, alert=ALERT, phase="opened", sink="ops")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def test_webhook_posts_the_alert_as_json(receiver: WebhookReceiver) -> None:
    WebhookSink("ops", receiver.url, allow_private=True).send(NOTE)
    assert receiver.bodies == [NOTE.payload()]
    body = receiver.bodies[0]
    assert body["schema"] == "tufota.alert/1"
    assert body["alert"]["summary"] == ALERT.summary  # type: ignore[index]


def test_webhook_retries_server_errors_with_backoff(receiver: WebhookReceiver) -> None:
    receiver.fail = 2
    waits: list[float] = []
    WebhookSink(
        "ops",
        receiver.url,
        attempts=3,
        backoff_seconds=0.5,
        sleep=waits.append,
        allow_private=True,
    ).send(NOTE)
    assert (receiver.attempts, len(receiver.bodies), waits) == (3, 1, [0.5, 1.0])


def test_webhook_gives_up_after_its_attempts_and_on_client_errors() -> None:
    busy = WebhookReceiver(fail=5)
    refusing = WebhookReceiver(fail=5, fail_with=404)
    try:
        with pytest.raises(TransportError, match="failed after 2 tries: HTTP 503"):
            WebhookSink(
                "ops", busy.url, attempts=2, sleep=lambda _s: None, allow_private=True
            ).send(NOTE)
        with pytest.raises(TransportError, match="refused the alert: HTTP 404"):
            WebhookSink(
                "ops", refusing.url, attempts=3, sleep=lambda _s: None, allow_private=True
            ).send(NOTE)
        assert (busy.attempts, refusing.attempts) == (2, 1)
    finally:
        busy.close()
        refusing.close()


def test_webhook_to_a_closed_port_is_a_transport_error() -> None:
    closed = WebhookReceiver()
    url = closed.url
    closed.close()
    with pytest.raises(TransportError):
        WebhookSink("ops", url, attempts=1, timeout=2, allow_private=True).send(NOTE)


class _Redirector:
    """A loopback server answering every POST with 302 to an internal URL it also serves."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.requests.append(("POST", self.path))
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(302)
                self.send_header("Location", "/internal/admin?drop=all")
                self.end_headers()

            def do_GET(self) -> None:
                outer.requests.append(("GET", self.path))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_webhook_does_not_follow_a_redirect() -> None:
    server = _Redirector()
    try:
        sink = WebhookSink(
            "ops", f"http://127.0.0.1:{server.port}/hook", attempts=3, allow_private=True
        )
        with pytest.raises(TransportError, match=r"HTTP 302 .*redirects are not followed"):
            sink.send(NOTE)
    finally:
        server.close()
    assert server.requests == [("POST", "/hook")]  # one try, no GET of the internal URL


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/hook",
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://0.0.0.0/hook",
        "http://localhost:9000/hook",
    ],
)
def test_webhook_to_loopback_link_local_or_metadata_is_refused_when_configured(
    url: str,
) -> None:
    with pytest.raises(InputError, match="--allow-private"):
        SinkSpec("ops", "webhook", url=url)
    with pytest.raises(InputError, match="--allow-private"):
        WebhookSink("ops", url)
    assert SinkSpec("ops", "webhook", url=url, allow_private=True).allow_private


def test_webhook_checks_the_resolved_address_at_delivery(receiver: WebhookReceiver) -> None:
    # The machine's host name passes the configuration check (it is a name)
    # but resolves to loopback: the delivery's own check must catch it.
    host = socket.gethostname()
    try:
        address = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except OSError:
        pytest.skip(f"host name {host} does not resolve")
    if not str(address).startswith("127."):
        pytest.skip(f"host name {host} resolves to {address}, not loopback")
    port = receiver.url.rsplit(":", 1)[1].split("/")[0]
    url = f"http://{host}:{port}/hook"
    sink = build_sink(SinkSpec("ops", "webhook", url=url))
    with pytest.raises(TransportError, match="loopback address; allow it with --allow-private"):
        sink.send(NOTE)
    assert receiver.attempts == 0
    build_sink(SinkSpec("ops", "webhook", url=url, allow_private=True)).send(NOTE)
    assert receiver.attempts == 1


def test_sink_specs_round_trip_allow_private() -> None:
    spec = SinkSpec("ops", "webhook", url="http://127.0.0.1/", allow_private=True)
    assert SinkSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    plain = SinkSpec("ops", "webhook", url="https://alerts.example/")
    assert "allow_private" not in plain.to_json()
    with pytest.raises(InputError, match="allow_private must be true or false"):
        SinkSpec.from_json({"name": "ops", "kind": "log", "allow_private": "yes"})


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "ops", "kind": "webhook", "url": "ftp://x"}, "http"),
        ({"name": "ops", "kind": "sns", "topic_arn": "topic"}, "ARN"),
        ({"name": "ops", "kind": "pager"}, "not one of"),
        ({"name": "o p s", "kind": "log"}, "letters, digits"),
        ({"name": "ops", "kind": "log", "min_severity": "loud"}, "min severity"),
        ({"name": "ops", "kind": "log", "colour": "red"}, "unknown sink fields"),
    ],
)
def test_bad_sink_specs_are_refused(spec: dict[str, str], match: str) -> None:
    with pytest.raises(InputError, match=match):
        SinkSpec.from_json(spec)


def test_sns_sink_publishes_to_a_topic_on_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        kwargs = {"region_name": "eu-west-1", "endpoint_url": endpoint}
        sns = boto3.client("sns", **kwargs)
        sqs = boto3.client("sqs", **kwargs)
        topic = sns.create_topic(Name="tufota-alerts")["TopicArn"]
        queue = sqs.create_queue(QueueName="ops")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

        sink = build_sink(
            SinkSpec("aws", "sns", topic_arn=topic, region="eu-west-1", endpoint_url=endpoint)
        )
        assert isinstance(sink, SnsSink)
        sink.send(NOTE)

        messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=2)["Messages"]
        envelope = json.loads(messages[0]["Body"])
        assert envelope["Subject"].startswith("[tufota CRITICAL] rollout r1 paused")
        assert json.loads(envelope["Message"]) == NOTE.payload()
        assert envelope["MessageAttributes"]["kind"]["Value"] == "rollout_paused"

        gone = SnsSink("aws", topic + "-missing", sns)
        with pytest.raises(TransportError, match="SNS sink aws failed"):
            gone.send(NOTE)
    finally:
        server.stop()


def test_alert_text_from_devices_reaches_sinks_with_controls_made_visible() -> None:
    from staging._alerts import AlertDraft

    draft = AlertDraft(
        key="device:dev-1:failed",
        kind="download_stalled",
        severity="warning",
        summary="dev-1 failed: \u202eevil\x1b[2J",
        details={"error_message": "boot \u2066x\u2069", "nested": ["\u200bz"]},
    )
    assert draft.summary == "dev-1 failed: \\u{202E}evil\\u{001B}[2J"
    assert draft.details["error_message"] == "boot \\u{2066}x\\u{2069}"
    assert draft.details["nested"] == ["\\u{200B}z"]
