"""Prometheus metrics, one registry per app so several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from media.loss import LOSS_REASONS


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("ccengine_active_calls", "Calls in progress", registry=r)
        self.calls = Counter("ccengine_calls", "Calls accepted", ["channel"], registry=r)
        self.rejected = Counter(
            "ccengine_offers_rejected", "Call offers refused", ["reason"], registry=r
        )
        self.frames = Counter(
            "ccengine_frames_processed", "20 ms analysis frames processed", registry=r
        )
        self.frames_lost = Counter(
            "ccengine_frames_lost",
            "20 ms frames of caller audio never analysed, by why (media/loss.py): gap (never "
            "arrived: the network, or a socket the engine read too late), late (skipped: "
            "analysis was behind), queue (a phone call's queue was full), recognizer "
            "(speech dropped: its recognizer was behind)",
            ["reason"],
            registry=r,
        )
        for reason in LOSS_REASONS:  # at 0 from the start, not only once one is lost
            self.frames_lost.labels(reason)
        self.udp_drops = Counter(
            "ccengine_udp_receive_drops",
            "UDP datagrams (RTP, ICE, SIP) the kernel dropped because the engine did not "
            "read its sockets in time",
            registry=r,
        )
        self.asr_latency = Histogram(
            "ccengine_asr_latency_seconds",
            "From the last voiced audio of an utterance to its final transcript, by what "
            "ended the utterance (sure, complete, fragment, incomplete: a window after the "
            "recognizer's look at a pause; silence: the ratio rule; cut; closed)",
            ["end"],
            # fine around the 300 ms goal
            buckets=(0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=r,
        )
        self.dropped_chunks = Counter(
            "ccengine_asr_dropped_chunks", "Speech chunks dropped: recognizer behind", registry=r
        )
        self.asr_failures = Counter(
            "ccengine_asr_failures",
            "Recognizers lost with their worker process (utterances not transcribed)",
            registry=r,
        )
        self.dropped_partials = Counter(
            "ccengine_dropped_partials", "Partial transcripts dropped: backlog", registry=r
        )
        self.escalations = Counter(
            "ccengine_escalations", "Escalation rules fired", ["rule"], registry=r
        )
        self.bot_barge_ins = Counter(
            "ccengine_bot_barge_ins", "Virtual agent prompts cut off by the caller", registry=r
        )
        self.bot_actions = Histogram(
            "ccengine_bot_action_seconds",
            "Virtual agent actions (HTTP calls to the business's systems), by outcome",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=r,
        )
        self.redactions = Counter(
            "ccengine_redactions", "Sensitive spans redacted from transcripts", registry=r
        )
        self.ended = Counter("ccengine_calls_ended", "Calls ended", ["reason"], registry=r)
        self.sip_auth_failures = Counter(
            "ccengine_sip_auth_failures",
            "SIP digest answers refused: wrong, replay (an answer seen before) or throttled "
            "(the address or user is locked out)",
            ["reason"],
            registry=r,
        )
        self.sip_auth_lockouts = Counter(
            "ccengine_sip_auth_lockouts",
            "Addresses or user names locked out after repeated wrong SIP digest answers",
            ["kind"],
            registry=r,
        )
        self.rtp_refused = Counter(
            "ccengine_rtp_refused_packets",
            "Phone-call RTP packets refused: from a host the call did not signal (foreign), "
            "or from another address of one while the call's stream goes on (stray)",
            ["reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "ccengine_connections_refused",
            "HTTP and SIP-over-TCP connections refused: too many from one address, too "
            "many in all, or too few file descriptors left",
            ["listener", "reason"],
            registry=r,
        )
        # admission (engine/capacity.py): refusals count in ``rejected`` as loop_lag,
        # backlog, cpu or limit, and while draining (engine/drain.py) as draining
        self.loop_lag = Histogram(
            "ccengine_event_loop_lag_seconds",
            "How late the event loop woke a task sleeping 50 ms",
            # fine around the 20 ms goal (a p99 is read between two bounds)
            buckets=(
                0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025,
                0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
            ),
            registry=r,
        )  # fmt: skip
        self.gc_pause = Histogram(
            "ccengine_gc_pause_seconds",
            "How long each garbage collection stopped the thread that ran it (most often "
            "the event loop's), by generation (2: a full collection)",
            ["generation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.node_full = Gauge(
            "ccengine_node_full", "1 while new calls are refused (admission)", registry=r
        )
        self.draining = Gauge(
            "ccengine_node_draining",
            "1 while the node drains (engine/drain.py): no new calls; it exits once its calls end",
            registry=r,
        )
        self.cpu_utilisation = Gauge(
            "ccengine_cpu_utilisation",
            "CPU of the engine and its recognition workers, fraction of usable cores (5 s)",
            registry=r,
        )
        # a full disk or a database that stopped answering: what the engine holds in
        # memory meanwhile (engine/spool.py, engine/eventlog.py), lost if it dies too
        self.storage_waiting = Gauge(
            "ccengine_storage_waiting_writes",
            "Writes held in memory until storage answers again: call (transcripts, "
            "state, ends) or event (the event log)",
            ["kind"],
            registry=r,
        )
        self.malloc_in_use = Gauge(
            "ccengine_malloc_in_use_bytes",
            "Bytes the engine process holds from malloc (glibc mallinfo2; NaN elsewhere): "
            "resident memory that grows while this stays flat is freed pages kept, not a leak",
            registry=r,
        )
        # bounded caches fill to their bound and stay: what a soak's memory curve
        # includes that is not a leak (bench/capacity.py subtracts it)
        self.bounded_bytes = Gauge(
            "ccengine_bounded_cache_bytes",
            "Bytes held by caches with a fixed bound: prompt (synthesised prompts, "
            "16 MiB at most) or event_ring (recent events kept for resuming streams)",
            ["cache"],
            registry=r,
        )
        # engines sharing events through Redis (engine/redisstream.py)
        self.shared_events = Gauge(
            "ccengine_shared_events",
            "The Redis event stream's reader: held (events waiting for their engine to "
            "store them), dropped (events skipped since start: their engine stopped "
            "before storing them, or stuck), recovered (events an engine stored but died "
            "before marking: looked up in the database and handed out), restarts (times "
            "its streams were cut off for events it could not read), unreadable "
            "(malformed entries skipped), "
            "unknown_type (events of a type this engine does not know, handed on as "
            "they came), reader_failures (times the reader failed unexpectedly and "
            "was started again) or counter_resets (times this engine found Redis' "
            "event counter lost and set it again above every id used)",
            ["what"],
            registry=r,
        )
        self.recognition_backlog = Gauge(
            "ccengine_recognition_backlog_seconds",
            "Seconds of audio the most delayed caller has waiting for analysis",
            registry=r,
        )
