"""paho-mqtt 2.x against a running Rampart broker over mutual TLS.

Usage: paho_interop.py HOST PORT KEYDIR
KEYDIR holds ca.crt and the credentials of devices `paho-dev`, `paho-will`
and of the identity `reader`, which may subscribe to devices/#.
Exits 0 when every check passed; prints what failed otherwise.
"""

import queue
import ssl
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST, PORT, KEYS = sys.argv[1], int(sys.argv[2]), sys.argv[3]
LIMIT = 20.0  # seconds; a bound for failures, never reached when passing


def client(name, protocol, **kw):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol, **kw)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=f"{KEYS}/ca.crt")
    ctx.load_cert_chain(f"{KEYS}/{name}.crt", f"{KEYS}/{name}.key")
    c.tls_set_context(ctx)
    return c


def wait(q, what):
    try:
        return q.get(timeout=LIMIT)
    except queue.Empty:
        sys.exit(f"FAILED: no {what} within {LIMIT}s")


def connect(c, **kw):
    done = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props: done.put(rc)
    c.connect(HOST, PORT, keepalive=30, **kw)
    c.loop_start()
    rc = wait(done, "CONNACK")
    if rc.is_failure:
        sys.exit(f"FAILED: CONNACK {rc}")


received = queue.Queue()
reader = client("reader", mqtt.MQTTv5)
reader.on_message = lambda cl, ud, msg: received.put(msg)
connect(reader)
subscribed = queue.Queue()
reader.on_subscribe = lambda cl, ud, mid, codes, props: subscribed.put(codes)
sub_props = Properties(PacketTypes.SUBSCRIBE)
sub_props.SubscriptionIdentifier = 42
reader.subscribe("devices/+/telemetry/up", qos=2, properties=sub_props)
reader.subscribe("devices/+/state/up", qos=1)
for _ in range(2):
    codes = wait(subscribed, "SUBACK")
    if any(c.is_failure for c in codes):
        sys.exit(f"FAILED: SUBACK {codes}")

# QoS 0, 1 and 2 from a v5 device, with properties that must be forwarded.
dev = client("paho-dev", mqtt.MQTTv5)
connect(dev)
for qos in (0, 1, 2):
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("unit", "celsius")]
    props.ContentType = "application/json"
    info = dev.publish("devices/paho-dev/telemetry/up", f'{{"seq":{qos},"m":{{"t":1}}}}', qos=qos, properties=props)
    info.wait_for_publish(timeout=LIMIT)
    if not info.is_published():
        sys.exit(f"FAILED: QoS {qos} publish not acknowledged")
seen = set()
for _ in range(3):
    msg = wait(received, "forwarded telemetry")
    p = msg.properties
    if getattr(p, "ContentType", None) != "application/json" or ("unit", "celsius") not in getattr(p, "UserProperty", []):
        sys.exit(f"FAILED: properties not forwarded: {p}")
    if 42 not in (getattr(p, "SubscriptionIdentifier", None) or []):
        sys.exit(f"FAILED: subscription identifier missing: {p}")
    seen.add(msg.payload.decode())
if seen != {'{"seq":0,"m":{"t":1}}', '{"seq":1,"m":{"t":1}}', '{"seq":2,"m":{"t":1}}'}:
    sys.exit(f"FAILED: received {seen}")

# A v3.1.1 device whose connection drops: its will is published.
willing = client("paho-will", mqtt.MQTTv311)
willing.will_set("devices/paho-will/state/up", '{"online":false}', qos=1)
connect(willing)
willing.loop_stop()
willing.socket().close()  # no DISCONNECT: an abnormal end
msg = wait(received, "will message")
if msg.topic != "devices/paho-will/state/up" or msg.payload != b'{"online":false}':
    sys.exit(f"FAILED: will was {msg.topic} {msg.payload!r}")

# A clean DISCONNECT publishes no will.
clean = client("paho-will", mqtt.MQTTv311)
clean.will_set("devices/paho-will/state/up", '{"should_not_appear":true}', qos=1)
connect(clean)
clean.disconnect()
clean.loop_stop()
dev.publish("devices/paho-dev/state/up", '{"marker":true}', qos=1).wait_for_publish(timeout=LIMIT)
msg = wait(received, "marker")
if msg.payload != b'{"marker":true}':
    sys.exit(f"FAILED: will published after a clean disconnect: {msg.payload!r}")

dev.disconnect()
reader.disconnect()
print("paho interop: all checks passed")
