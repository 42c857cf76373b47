#!/usr/bin/env python3
"""fakesb: an in-memory stand-in for Azure Service Bus, speaking AMQP 1.0.

It implements the slice of the Service Bus AMQP protocol that the Go
azservicebus client uses for queues: claims-based security ($cbs), senders,
peek-lock receivers (rcv-settle-mode second), sessions, the $management
operations for lock renewal, peeking, scheduling and settlement, and the
$DeadLetterQueue sub-queue. README.md in this folder lists every way it
differs from the real service.

Run it with the Debian interpreter that can import python3-qpid-proton:

    /usr/bin/python3 fakesb.py --port 5672 --config queues.json

The config file holds {"queues": [{"name": "q", "lock_duration_ms": 60000,
"max_delivery_count": 10, "duplicate_window_ms": 600000, "sessions": false}]}.

Standard input takes one JSON command per line:

    {"op": "create", "queue": {...same fields as a config entry...}}
    {"op": "drop"}        closes every client connection at the socket

Standard output reports one JSON event per line: {"event": "listening"},
{"event": "created", "queue": ...}, {"event": "dropped", "connections": n},
{"event": "token", "type": ..., "audience": ...}.
"""

import argparse
import json
import signal
import sys
import threading
import queue as pyqueue
import time
import uuid

from proton import (Array, Condition, Data, Delivery, Described, Endpoint,
                    Message, Terminus, int32, symbol, timestamp, ulong,
                    UNDESCRIBED)
from proton.reactor import Container

SESSION_FILTER = symbol("com.microsoft:session-filter")
SESSION_FILTER_CODE = ulong(0x00000137000000C)
LOCK_LOST = "com.microsoft:message-lock-lost"
SESSION_LOCK_LOST = "com.microsoft:session-lock-lost"
DLQ_SUFFIX = "/$DeadLetterQueue"
MGMT_SUFFIX = "/$management"
MAX_MESSAGE_BYTES = 256 * 1024
TICK = 0.05
DEFAULT_ACCEPT_TIMEOUT = 1.0
EPOCH_TICKS = 621355968000000000

A_SEQ = symbol("x-opt-sequence-number")
A_ENQUEUED = symbol("x-opt-enqueued-time")
A_LOCKED_UNTIL = symbol("x-opt-locked-until")
A_SCHEDULED = symbol("x-opt-scheduled-enqueue-time")
A_STATE = symbol("x-opt-message-state")


def now():
    return time.time()


def ms(t):
    return timestamp(int(t * 1000))


def new_lock_token():
    """A random lock token whose .NET byte order is plain ASCII.

    The delivery tag carries the lock token; proton's Python binding takes
    tags as text, so every byte is kept below 0x80 to pass through unchanged.
    """
    raw = bytes(b & 0x7F for b in uuid.uuid4().bytes)
    return uuid.UUID(bytes_le=raw)


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class QueueConfig:
    def __init__(self, d):
        self.name = d["name"]
        self.lock_duration = d.get("lock_duration_ms", 60000) / 1000.0
        self.max_delivery_count = d.get("max_delivery_count", 10)
        self.duplicate_window = d.get("duplicate_window_ms", 600000) / 1000.0
        self.sessions = bool(d.get("sessions", False))


class Entry:
    """One message in a queue or its dead-letter sub-queue."""

    def __init__(self, seq, raw, message_id, session_id, enqueued, visible_at):
        self.seq = seq
        self.raw = raw
        self.message_id = message_id
        self.session_id = session_id
        self.enqueued = enqueued
        self.visible_at = visible_at
        self.scheduled = visible_at > enqueued
        self.delivery_count = 0
        self.lock_token = None
        self.locked_until = 0.0
        self.link = None
        self.extra_props = {}


class Store:
    """A queue or a dead-letter sub-queue: entries ordered by sequence number."""

    def __init__(self, broker, cfg, dead_letter):
        self.broker = broker
        self.cfg = cfg
        self.dead_letter = dead_letter
        self.entries = {}

    def ordered(self):
        return [self.entries[k] for k in sorted(self.entries)]

    def available(self, entry, t):
        return entry.lock_token is None and entry.visible_at <= t


class Queue:
    def __init__(self, broker, cfg):
        self.cfg = cfg
        self.main = Store(broker, cfg, False)
        self.dlq = Store(broker, cfg, True)
        self.next_seq = 1
        self.dups = {}
        # session id -> [link, locked_until]
        self.session_locks = {}

    def seq(self):
        s = self.next_seq
        self.next_seq += 1
        return s


class Broker:
    def __init__(self, accept_timeout):
        self.queues = {}
        self.locks = {}  # uuid -> (store, entry)
        self.consumers = []  # outgoing links carrying messages
        self.pending_sessions = []  # (link, deadline) waiting for a session
        self.reply_links = {}  # (connection id, address) -> link
        self.connections = []
        self.commands = pyqueue.Queue()
        self.accept_timeout = accept_timeout
        self.container = None

    # ---- configuration -------------------------------------------------

    def create(self, d):
        cfg = QueueConfig(d)
        self.queues[cfg.name] = Queue(self, cfg)
        return cfg.name

    def resolve(self, address):
        """Maps a link address to (queue, store, is_management)."""
        if address is None:
            return None, None, False
        mgmt = address.endswith(MGMT_SUFFIX)
        if mgmt:
            address = address[: -len(MGMT_SUFFIX)]
        dead = address.endswith(DLQ_SUFFIX)
        if dead:
            address = address[: -len(DLQ_SUFFIX)]
        q = self.queues.get(address)
        if q is None:
            return None, None, mgmt
        return q, (q.dlq if dead else q.main), mgmt

    # ---- reactor callbacks ----------------------------------------------

    def on_reactor_init(self, event):
        self.container = event.container
        event.container.schedule(TICK, self)

    def on_timer_task(self, event):
        while True:
            try:
                cmd = self.commands.get_nowait()
            except pyqueue.Empty:
                break
            self.command(cmd)
        self.tick()
        event.container.schedule(TICK, self)

    def command(self, cmd):
        op = cmd.get("op")
        if op == "create":
            name = self.create(cmd["queue"])
            emit(event="created", queue=name)
        elif op == "drop":
            n = 0
            for conn in list(self.connections):
                t = conn.transport
                if t is not None:
                    t.close_tail()
                    t.close_head()
                    n += 1
                self.forget_connection(conn)
            self.connections = []
            emit(event="dropped", connections=n)
        else:
            emit(event="error", message="unknown command %r" % op)

    def on_connection_remote_open(self, event):
        conn = event.connection
        if conn.state & Endpoint.LOCAL_UNINIT:
            conn.container = "fakesb"
            conn.open()
        self.connections.append(conn)

    def on_connection_remote_close(self, event):
        conn = event.connection
        if not conn.state & Endpoint.LOCAL_CLOSED:
            conn.close()
        self.forget_connection(conn)

    def on_transport_closed(self, event):
        if event.connection is not None:
            self.forget_connection(event.connection)

    def forget_connection(self, conn):
        if conn in self.connections:
            self.connections.remove(conn)
        for link in list(self.consumers):
            if link.connection == conn:
                self.drop_consumer(link)
        self.pending_sessions = [p for p in self.pending_sessions if p[0].connection != conn]
        for key in [k for k, v in self.reply_links.items() if v.connection == conn]:
            del self.reply_links[key]

    def on_session_remote_open(self, event):
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    def on_session_remote_close(self, event):
        ssn = event.session
        if not ssn.state & Endpoint.LOCAL_CLOSED:
            ssn.close()
        for link in list(self.consumers):
            if link.session == ssn:
                self.drop_consumer(link)
        self.pending_sessions = [p for p in self.pending_sessions if p[0].session != ssn]

    def on_link_remote_close(self, event):
        link = event.link
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()
        self.drop_consumer(link)
        self.pending_sessions = [p for p in self.pending_sessions if p[0] != link]

    def on_link_remote_open(self, event):
        link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        if link.is_sender:
            self.open_outgoing(link)
        else:
            self.open_incoming(link)

    def on_link_flow(self, event):
        self.dispatch()

    def refuse(self, link, name, description):
        """Attach with no terminus, then detach with an error, as Service Bus does."""
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        link.source.type = Terminus.UNSPECIFIED
        link.target.type = Terminus.UNSPECIFIED
        link.open()
        link.condition = Condition(name, description)
        link.close()

    # ---- incoming links: client senders -----------------------------------

    def open_incoming(self, link):
        address = link.remote_target.address
        if address == "$cbs":
            link.target.copy(link.remote_target)
            link.source.copy(link.remote_source)
            link.open()
            link.flow(100)
            return
        q, store, mgmt = self.resolve(address)
        if q is None:
            self.refuse(link, "amqp:not-found", "The messaging entity '%s' could not be found." % address)
            return
        if not mgmt and store.dead_letter:
            self.refuse(link, "amqp:not-allowed", "Cannot send to a dead-letter sub-queue.")
            return
        link.target.copy(link.remote_target)
        link.source.copy(link.remote_source)
        link.max_message_size = MAX_MESSAGE_BYTES
        link.open()
        link.flow(100)

    # ---- outgoing links: client receivers ---------------------------------

    def open_outgoing(self, link):
        source = link.remote_source.address
        target = link.remote_target.address
        if source == "$cbs" or (source or "").endswith(MGMT_SUFFIX):
            if source != "$cbs" and self.resolve(source)[0] is None:
                self.refuse(link, "amqp:not-found", "The messaging entity '%s' could not be found." % source)
                return
            link.source.copy(link.remote_source)
            link.target.copy(link.remote_target)
            self.reply_links[(link.connection, target)] = link
            link.snd_settle_mode = link.remote_snd_settle_mode
            link.open()
            return
        q, store, _ = self.resolve(source)
        if q is None:
            self.refuse(link, "amqp:not-found", "The messaging entity '%s' could not be found." % source)
            return
        # Peek-lock receivers ask for rcv-settle-mode second; echo what was asked.
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.fake_store = store
        link.fake_queue = q
        link.fake_session = None
        filters = {}
        if link.remote_source.filter is not None:
            try:
                data = link.remote_source.filter
                data.rewind()
                if data.next() is not None:
                    filters = data.get_object() or {}
            except Exception:
                filters = {}
        wants_session = SESSION_FILTER in filters
        if q.cfg.sessions and not store.dead_letter:
            if not wants_session:
                # Service Bus refuses this link; the fake keeps it for
                # $management peeks but never delivers on it.
                link.fake_peek_only = True
                self.open_terminus(link)
                return
            requested = filters[SESSION_FILTER]
            if isinstance(requested, Described):
                requested = requested.value
            if requested is not None:
                holder = q.session_locks.get(requested)
                if holder is not None and holder[0] != link and self.alive(holder[0]):
                    self.refuse(link, "com.microsoft:session-cannot-be-locked",
                                "The requested session '%s' cannot be accepted. It may be locked by another receiver." % requested)
                    return
                self.grant_session(link, q, requested)
                return
            timeout = self.accept_timeout
            props = link.remote_properties or {}
            if symbol("com.microsoft:timeout") in props:
                timeout = float(props[symbol("com.microsoft:timeout")]) / 1000.0
            self.pending_sessions.append((link, now() + timeout))
            self.assign_sessions()
            return
        if wants_session:
            self.refuse(link, "amqp:not-allowed", "The entity is not session-enabled.")
            return
        self.open_terminus(link)
        self.consumers.append(link)

    def open_terminus(self, link):
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.open()

    def alive(self, link):
        return link in self.consumers and not (link.state & Endpoint.REMOTE_CLOSED)

    def grant_session(self, link, q, session_id):
        until = now() + q.cfg.lock_duration
        q.session_locks[session_id] = [link, until]
        link.fake_session = session_id
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.source.filter.clear()
        link.source.filter.put_object({SESSION_FILTER: Described(SESSION_FILTER_CODE, session_id)})
        link.properties = {symbol("com.microsoft:locked-until-utc"): int(until * 10000000) + EPOCH_TICKS}
        link.open()
        self.consumers.append(link)

    def assign_sessions(self):
        t = now()
        still = []
        for link, deadline in self.pending_sessions:
            if link.state & Endpoint.REMOTE_CLOSED or link.session.state & Endpoint.REMOTE_CLOSED:
                continue
            q = link.fake_queue
            sid = self.next_free_session(q, t)
            if sid is not None:
                self.grant_session(link, q, sid)
            elif t >= deadline:
                self.refuse(link, "com.microsoft:timeout",
                            "The operation did not complete within the allotted timeout.")
            else:
                still.append((link, deadline))
        self.pending_sessions = still

    def next_free_session(self, q, t):
        for e in q.main.ordered():
            if e.session_id is None or not q.main.available(e, t):
                continue
            holder = q.session_locks.get(e.session_id)
            if holder is None or not self.alive(holder[0]):
                return e.session_id
        return None

    def drop_consumer(self, link):
        if link in self.consumers:
            self.consumers.remove(link)
        q = getattr(link, "fake_queue", None)
        sid = getattr(link, "fake_session", None)
        if q is not None and sid is not None:
            holder = q.session_locks.get(sid)
            if holder is not None and holder[0] == link:
                del q.session_locks[sid]
                # Closing a session receiver gives its messages back.
                for e in list(q.main.entries.values()):
                    if e.session_id == sid and e.lock_token is not None:
                        self.unlock(q.main, e, failed=True)

    # ---- the clock ------------------------------------------------------

    def tick(self):
        t = now()
        for q in self.queues.values():
            for k in [k for k, exp in q.dups.items() if exp <= t]:
                del q.dups[k]
            for store in (q.main, q.dlq):
                for e in list(store.entries.values()):
                    if e.scheduled and e.visible_at <= t:
                        e.scheduled = False
                    if e.lock_token is not None and e.locked_until <= t and e.session_id is None:
                        self.unlock(store, e, failed=True)
            for sid, holder in list(q.session_locks.items()):
                link, until = holder
                if until <= t:
                    del q.session_locks[sid]
                    if link in self.consumers:
                        self.consumers.remove(link)
                    if not link.state & Endpoint.LOCAL_CLOSED:
                        link.condition = Condition(SESSION_LOCK_LOST, "The session lock has expired.")
                        link.close()
                    for e in list(q.main.entries.values()):
                        if e.session_id == sid and e.lock_token is not None:
                            self.unlock(q.main, e, failed=True)
        self.assign_sessions()
        self.dispatch()

    def unlock(self, store, e, failed):
        self.locks.pop(e.lock_token, None)
        e.lock_token = None
        e.link = None
        if not failed:
            e.delivery_count = max(0, e.delivery_count - 1)
            return
        if not store.dead_letter and e.delivery_count >= store.cfg.max_delivery_count:
            self.dead_letter(store, e, "MaxDeliveryCountExceeded",
                             "Message could not be consumed after %d delivery attempts." % e.delivery_count)

    def dead_letter(self, store, e, reason, description):
        q = self.queues[store.cfg.name]
        del store.entries[e.seq]
        e.extra_props = {"DeadLetterReason": reason, "DeadLetterErrorDescription": description}
        e.lock_token = None
        e.link = None
        q.dlq.entries[e.seq] = e

    # ---- delivering -------------------------------------------------------

    def dispatch(self):
        t = now()
        for link in list(self.consumers):
            if link.state & Endpoint.REMOTE_CLOSED or link.state & Endpoint.LOCAL_CLOSED:
                continue
            if getattr(link, "fake_peek_only", False):
                continue
            store = link.fake_store
            sid = link.fake_session
            while link.credit > 0:
                entry = None
                for e in store.ordered():
                    if not store.available(e, t):
                        continue
                    if sid is not None and e.session_id != sid:
                        continue
                    entry = e
                    break
                if entry is None:
                    break
                self.deliver(link, store, entry, t)
            if link.drain_mode and link.credit > 0:
                link.drained()

    def render(self, store, e, t, locked):
        m = Message()
        m.decode(e.raw)
        ann = dict(m.annotations or {})
        ann[A_SEQ] = e.seq
        ann[A_ENQUEUED] = ms(e.enqueued)
        if locked:
            ann[A_LOCKED_UNTIL] = ms(e.locked_until)
        if e.scheduled:
            ann[A_SCHEDULED] = ms(e.visible_at)
            ann[A_STATE] = 2
        m.annotations = ann
        if e.extra_props:
            props = dict(m.properties or {})
            props.update(e.extra_props)
            m.properties = props
        # The client reports header delivery-count + 1. A delivery carries
        # the deliveries before it; a peek reports the deliveries so far.
        m.delivery_count = e.delivery_count if locked else max(e.delivery_count - 1, 0)
        return m

    def deliver(self, link, store, e, t):
        token = new_lock_token()
        e.lock_token = token
        e.link = link
        if e.session_id is not None and link.fake_session is not None:
            e.locked_until = link.fake_queue.session_locks[e.session_id][1]
        else:
            e.locked_until = t + store.cfg.lock_duration
        m = self.render(store, e, t, True)
        e.delivery_count += 1
        self.locks[token] = (store, e)
        dlv = link.delivery(token.bytes_le.decode("ascii"))
        dlv.fake_token = token
        link.stream(m.encode())
        link.advance()

    # ---- deliveries -------------------------------------------------------

    def on_delivery(self, event):
        dlv = event.delivery
        link = event.link
        if link.is_receiver:
            if not dlv.readable or dlv.partial:
                return
            raw = link.recv(dlv.pending)
            link.advance()
            self.on_incoming(link, dlv, raw)
            if link.credit < 50:
                link.flow(100 - link.credit)
            return
        if dlv.remote_state and not dlv.settled:
            self.settle_from_link(link, dlv)

    def settle_from_link(self, link, dlv):
        token = getattr(dlv, "fake_token", None)
        if token is None:
            tag = dlv.tag
            token = uuid.UUID(bytes_le=tag.encode("ascii") if isinstance(tag, str) else bytes(tag))
        state = dlv.remote_state
        found = self.locks.get(token)
        if found is None:
            sid = getattr(link, "fake_session", None)
            dlv.local.condition = Condition(
                SESSION_LOCK_LOST if sid is not None else LOCK_LOST,
                "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.")
            dlv.update(Delivery.REJECTED)
            dlv.settle()
            self.dispatch()
            return
        store, e = found
        if state == Delivery.ACCEPTED:
            self.complete(store, e)
        elif state == Delivery.RELEASED:
            self.unlock(store, e, failed=False)
        elif state == Delivery.MODIFIED:
            self.apply_annotations(e, dlv.remote.annotations)
            self.unlock(store, e, failed=True)
        elif state == Delivery.REJECTED:
            cond = dlv.remote.condition
            info = dict(cond.info or {}) if cond is not None else {}
            reason = str(info.get(symbol("DeadLetterReason"), info.get("DeadLetterReason", "")))
            desc = str(info.get(symbol("DeadLetterErrorDescription"), info.get("DeadLetterErrorDescription", "")))
            self.settle_dead_letter(store, e, reason, desc)
        dlv.update(state)
        dlv.settle()
        self.dispatch()

    def apply_annotations(self, e, annotations):
        if not annotations:
            return
        m = Message()
        m.decode(e.raw)
        props = dict(m.properties or {})
        for k, v in annotations.items():
            props[str(k)] = v
        m.properties = props
        e.raw = m.encode()

    def complete(self, store, e):
        self.locks.pop(e.lock_token, None)
        store.entries.pop(e.seq, None)

    def settle_dead_letter(self, store, e, reason, description):
        self.locks.pop(e.lock_token, None)
        if store.dead_letter:
            # Dead-lettering a dead letter leaves it where it is.
            e.lock_token = None
            e.link = None
            return
        self.dead_letter(store, e, reason, description)

    def on_incoming(self, link, dlv, raw):
        address = link.remote_target.address
        if address == "$cbs":
            self.on_cbs(link, dlv, raw)
            return
        q, store, mgmt = self.resolve(address)
        if mgmt:
            dlv.update(Delivery.ACCEPTED)
            dlv.settle()
            self.on_management(link, q, store, raw)
            return
        m = Message()
        m.decode(raw)
        when = (m.annotations or {}).get(A_SCHEDULED)
        err = self.enqueue(q, m, raw, float(when) / 1000.0 if when is not None else now())
        if err is not None:
            dlv.local.condition = Condition(err[0], err[1])
            dlv.update(Delivery.REJECTED)
        else:
            dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        self.tick()

    def enqueue(self, q, m, raw, visible_at):
        t = now()
        if len(raw) > MAX_MESSAGE_BYTES:
            return ("amqp:link:message-size-exceeded", "The message is larger than %d bytes." % MAX_MESSAGE_BYTES)
        sid = m.group_id
        if q.cfg.sessions and not sid:
            return ("amqp:not-allowed", "The SessionId was not set on a message, and it cannot be sent to the entity. Entities that have session support enabled can only receive messages that have the SessionId set to a valid value.")
        mid = m.id
        if mid is not None and q.cfg.duplicate_window > 0:
            key = str(mid)
            if key in q.dups:
                return None
            q.dups[key] = t + q.cfg.duplicate_window
        seq = q.seq()
        e = Entry(seq, raw, mid, sid if sid else None, t, max(t, visible_at))
        q.main.entries[seq] = e
        return None

    # ---- $cbs ------------------------------------------------------------------

    def on_cbs(self, link, dlv, raw):
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        req = Message()
        req.decode(raw)
        props = req.properties or {}
        emit(event="token", type=str(props.get("type")), audience=str(props.get("name")),
             token=req.body if isinstance(req.body, str) else "")
        self.reply(link, req, 202, "Accepted", None)

    def reply(self, link, req, code, description, body, condition=None):
        out = self.reply_links.get((link.connection, req.reply_to))
        if out is None or out.state & Endpoint.LOCAL_CLOSED:
            return
        m = Message()
        m.correlation_id = str(req.id)
        props = {"status-code": int32(code), "status-description": description}
        if condition:
            props["error-condition"] = symbol(condition)
        m.properties = props
        m.body = body
        dlv = out.delivery(str(uuid.uuid4()))
        out.stream(m.encode())
        out.advance()
        dlv.settle()

    # ---- $management -------------------------------------------------------

    def on_management(self, link, q, store, raw):
        req = Message()
        req.decode(raw)
        op = (req.properties or {}).get("operation")
        body = req.body if isinstance(req.body, dict) else {}
        # The receiver link a request speaks for, when the client names it.
        self.associated_link = (req.properties or {}).get("associated-link-name")
        try:
            handler = {
                "com.microsoft:renew-lock": self.op_renew_lock,
                "com.microsoft:renew-session-lock": self.op_renew_session_lock,
                "com.microsoft:peek-message": self.op_peek,
                "com.microsoft:schedule-message": self.op_schedule,
                "com.microsoft:cancel-scheduled-message": self.op_cancel_scheduled,
                "com.microsoft:update-disposition": self.op_update_disposition,
                "com.microsoft:get-session-state": self.op_get_session_state,
                "com.microsoft:set-session-state": self.op_set_session_state,
            }.get(op)
            if handler is None:
                self.reply(link, req, 501, "operation %s is not implemented by fakesb" % op, None)
                return
            code, desc, value, cond = handler(q, store, body)
        except Exception as exc:  # report, keep serving
            code, desc, value, cond = 500, "fakesb: %s" % exc, None, "com.microsoft:internal-error"
        self.reply(link, req, code, desc, value, cond)
        self.dispatch()

    def op_renew_lock(self, q, store, body):
        t = now()
        out = []
        for tok in body.get("lock-tokens", []):
            found = self.locks.get(tok)
            if found is None or found[1].session_id is not None:
                return 410, "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.", None, LOCK_LOST
            s, e = found
            e.locked_until = t + s.cfg.lock_duration
            out.append(ms(e.locked_until))
        return 200, "OK", {"expirations": Array(UNDESCRIBED, Data.TIMESTAMP, *out)}, None

    def op_renew_session_lock(self, q, store, body):
        sid = body.get("session-id")
        holder = q.session_locks.get(sid)
        if holder is None:
            return 410, "The session lock has expired on the MessageSession.", None, SESSION_LOCK_LOST
        if self.associated_link is not None and holder[0].name != self.associated_link:
            # The session lapsed and another receiver holds it now.
            return 410, "The session lock was lost; another receiver holds the session.", None, SESSION_LOCK_LOST
        holder[1] = now() + q.cfg.lock_duration
        for e in q.main.entries.values():
            if e.session_id == sid and e.lock_token is not None:
                e.locked_until = holder[1]
        return 200, "OK", {"expiration": ms(holder[1])}, None

    def op_peek(self, q, store, body):
        t = now()
        start = int(body.get("from-sequence-number", 0))
        count = int(body.get("message-count", 1))
        out = []
        for e in store.ordered():
            if e.seq < start:
                continue
            if len(out) >= count:
                break
            m = self.render(store, e, t, False)
            out.append({"message": m.encode()})
        if not out:
            return 204, "No Content", None, None
        return 200, "OK", {"messages": out}, None

    def op_schedule(self, q, store, body):
        seqs = []
        for item in body.get("messages", []):
            raw = item["message"]
            m = Message()
            m.decode(raw)
            when = (m.annotations or {}).get(A_SCHEDULED)
            visible = float(when) / 1000.0 if when is not None else now()
            before = q.next_seq
            err = self.enqueue(q, m, raw, visible)
            if err is not None:
                return 400, err[1], None, err[0]
            seqs.append(before if q.next_seq > before else 0)
        return 200, "OK", {"sequence-numbers": Array(UNDESCRIBED, Data.LONG, *seqs)}, None

    def op_cancel_scheduled(self, q, store, body):
        for s in body.get("sequence-numbers", []):
            e = q.main.entries.get(s)
            if e is not None and e.scheduled:
                del q.main.entries[s]
        return 200, "OK", None, None

    def op_update_disposition(self, q, store, body):
        status = body.get("disposition-status")
        for tok in body.get("lock-tokens", []):
            found = self.locks.get(tok)
            if found is None:
                return 410, "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.", None, LOCK_LOST
            s, e = found
            if status == "completed":
                self.complete(s, e)
            elif status == "abandoned":
                self.apply_annotations(e, body.get("properties-to-modify"))
                self.unlock(s, e, failed=True)
            elif status == "suspended":
                self.settle_dead_letter(s, e, str(body.get("deadletter-reason") or ""),
                                        str(body.get("deadletter-description") or ""))
            else:
                return 400, "disposition %s is not supported by fakesb" % status, None, "com.microsoft:argument-error"
        return 200, "OK", None, None

    def op_get_session_state(self, q, store, body):
        states = getattr(q, "session_states", {})
        return 200, "OK", {"session-state": states.get(body.get("session-id"))}, None

    def op_set_session_state(self, q, store, body):
        if not hasattr(q, "session_states"):
            q.session_states = {}
        q.session_states[body.get("session-id")] = body.get("session-state")
        return 200, "OK", None, None


def read_commands(broker):
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            broker.commands.put(json.loads(line))
        except ValueError as exc:
            emit(event="error", message="bad command: %s" % exc)


def main():
    p = argparse.ArgumentParser(description="in-memory fake of Azure Service Bus over AMQP 1.0")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config", help="JSON file with the queues to create")
    p.add_argument("--accept-timeout", type=float, default=DEFAULT_ACCEPT_TIMEOUT,
                   help="seconds an accept-next-session attach waits for a session")
    args = p.parse_args()

    broker = Broker(args.accept_timeout)
    if args.config:
        with open(args.config) as f:
            for q in json.load(f).get("queues", []):
                broker.create(q)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=read_commands, args=(broker,), daemon=True).start()
    container = Container(broker)
    container.listen("%s:%d" % (args.host, args.port))
    emit(event="listening", host=args.host, port=args.port)
    container.run()


if __name__ == "__main__":
    main()
