"""One Settings object, read from the environment (prefix ``CCENGINE_``) and an
optional ``.env`` file."""

from __future__ import annotations

import ipaddress
import re
import socket
from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# RFC 7064 / RFC 7065 URIs, as WebRTC takes them: stun:host[:port], turn(s):host[:port]
# [?transport=udp|tcp]
ICE_URL = re.compile(
    r"(?P<scheme>stuns?|turns?):(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:\?transport=(?:udp|tcp))?"
)


class IceServer(BaseModel):
    """One STUN or TURN server, shaped like WebRTC's RTCIceServer."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: SecretStr | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _ice_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if ICE_URL.fullmatch(url) is None:
                raise ValueError(f"not a stun:, turn: or turns: URL: {url!r}")
        return urls

    @model_validator(mode="after")
    def _turn_needs_credentials(self) -> IceServer:
        if any(u.startswith("turn") for u in self.urls) and not (self.username and self.credential):
            raise ValueError("a TURN server needs a username and a credential")
        return self

    def public(self) -> dict[str, object]:
        """As a browser's RTCPeerConnection takes it (the credential in clear)."""
        out: dict[str, object] = {"urls": self.urls}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential.get_secret_value()
        return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CCENGINE_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # SQLite (one engine), or PostgreSQL for several engines sharing calls, the event
    # log and the webhook outbox: postgresql+asyncpg://user:password@host:5432/ccengine
    database_url: str = "sqlite+aiosqlite:///./ccengine.db"
    # SQLite's integrity check at start: "quick" reads every page, "full" also checks
    # that every index matches its table (slower on a big file), "off" skips it. A
    # damaged database stops the engine with one line and exit code 65.
    database_check: Literal["quick", "full", "off"] = "quick"
    # PostgreSQL: connections this engine opens at most (5 kept while idle); every
    # engine's count together must stay under the server's max_connections
    database_max_connections: int = Field(15, ge=1, le=1000)
    # Folders searched for vosk models, before vosk's cache and model packages.
    model_dirs: list[str] = Field(default_factory=lambda: ["./models"])
    # The piper prompt voice with int8 weights (made once into the first of model_dirs;
    # 44 MB less memory, the same speed, recognised as well); false: its float original.
    prompt_voice_int8: bool = True
    default_language: str = "en"
    # Languages whose recognizer is loaded at start-up rather than on first call.
    preload_languages: list[str] = Field(default_factory=lambda: ["en"])
    vad_aggressiveness: int = Field(2, ge=0, le=3)
    # No audio for this long ends the call: the caller is gone.
    media_timeout: float = Field(15.0, gt=0, le=300)
    max_body_bytes: int = 256 * 1024
    # A hard cap on calls in progress; more offers get 503 with Retry-After.
    max_concurrent_calls: int = Field(64, ge=1)
    # Admission by measured load (engine/capacity.py): while one of these is over, new
    # calls get 503 with Retry-After, until it falls below 80 % of it again. The event
    # loop's lag, p99 over the last 10 s, in ms:
    admission_max_loop_lag_ms: float = Field(50.0, ge=0)
    # Seconds of caller audio waiting for a recognizer:
    admission_max_backlog_s: float = Field(2.0, ge=0)
    # CPU of this process and its recognition workers over the last 5 s, as a fraction
    # of the cores it may use (1.0: all of them):
    admission_max_cpu: float = Field(0.9, ge=0, le=1)
    # The fraction of caller audio lost on this node (not on the network: skipped
    # because analysis fell behind, dropped from a full queue, or dropped by the kernel
    # because the engine did not read its sockets in time) over the last 5 s:
    admission_max_frame_loss: float = Field(0.05, ge=0, le=1)
    # WebRTC offers that have not sent audio yet (ICE and DTLS under way, or a caller
    # who never sends any: those end after media_timeout). At most this many from one
    # address (more get 429 with Retry-After) and in all (503). Nothing heavy (the
    # recognizer, the analysis) is set up for a call before its first audio.
    max_pending_offers_per_address: int = Field(10, ge=1)
    max_pending_offers: int = Field(32, ge=1)
    # HTTP connections (WebSockets and event streams included) at once, from one address
    # (CCENGINE_TRUSTED_PROXIES are exempt) and in all; over either, a new connection
    # gets 503 with Retry-After and is closed.
    http_max_connections_per_address: int = Field(256, ge=1)
    http_max_connections: int = Field(4096, ge=1)
    # Seconds a client has to send a whole request (line, headers and body), counted
    # from its first byte, or for a new connection from connecting; then it gets 408
    # and is closed (slowloris). Idle keep-alive connections close after 5 s.
    http_request_timeout: float = Field(10.0, gt=0, le=300)
    # SIP over TCP: connections from one address (CCENGINE_SIP_TRUNKS are exempt) and in
    # all; seconds a message may take to arrive once it has begun (and a new
    # connection's first message); seconds a connection may stay silent between
    # messages (a CRLF keep-alive counts, RFC 5626).
    sip_tcp_max_connections_per_address: int = Field(16, ge=1)
    sip_tcp_max_connections: int = Field(1024, ge=1)
    sip_tcp_message_timeout: float = Field(10.0, gt=0, le=300)
    sip_tcp_idle_timeout: float = Field(600.0, gt=0, le=3600)
    # File descriptors kept for calls (RTP and ICE sockets, recognition workers, the
    # database): HTTP and SIP connections are refused once fewer are left. At start the
    # soft limit on open files is raised to the hard limit.
    fd_reserve: int = Field(256, ge=16)
    # Recognizers decoding at once (one lane each); 0: two per core when the decoders
    # release the GIL (Moonshine, vosk), else one per core.
    asr_workers: int = Field(0, ge=0, le=64)
    # Processes those lanes are spread over; 0: one process for them all when every
    # preloaded backend releases the GIL while it decodes (Moonshine, vosk: one copy of
    # the model), else one per lane (pocketsphinx holds the GIL).
    asr_processes: int = Field(0, ge=0, le=64)
    # Threads for the per-utterance prosody maths; 0: two per core.
    asr_threads: int = Field(0, ge=0)
    # The recognizer per language where the default is not wanted: {"en": "vosk"}
    # (a vosk model in model_dirs), {"en": "pocketsphinx"}. English defaults to
    # Moonshine, other languages to vosk.
    asr_backends: dict[str, Literal["moonshine", "vosk", "pocketsphinx"]] = Field(
        default_factory=dict
    )
    # TOML file of escalation rules ([[rules]] tables); unset: the built-in set.
    escalation_rules: str | None = None
    # YAML (or JSON) file of post-call categories ({name: [phrases]}, see
    # deploy/analytics-categories.yaml); unset: that file; "" none.
    analytics_categories: str | None = None
    # Folder of Markdown/YAML articles for suggested answers; unset: no suggestions.
    knowledge_base: str | None = None
    # Folder of virtual agent flows (YAML, engine/bot/flows.py); unset: no virtual agent
    # (callers hear the key menu on the phone and nothing in-app until they are queued).
    bot_flows: str | None = None
    # Signs the virtual agent's actions like webhooks (Ccengine-Signature); unset: unsigned.
    bot_action_secret: SecretStr | None = None
    # The virtual agent's optional brain (engine/bot/brain.py): an OpenAI-compatible
    # endpoint ("http://llm.internal/v1") asked which intent words no example matched
    # mean; it only chooses among the flow's intents and never speaks. Unset: off.
    bot_llm_url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    bot_llm_model: str = "default"
    bot_llm_key: SecretStr | None = None
    bot_llm_timeout: float = Field(3.0, gt=0, le=10)
    # A caller back within this many hours whose last request of the virtual agent was
    # left open is asked about it first ("Are you calling about your order 83016?");
    # 0: never.
    returning_hours: float = Field(72.0, ge=0, le=24 * 90)
    # A chat with no message from anyone for this long ends ("chat_idle"): its caller
    # closed the page without a word.
    chat_idle_minutes: float = Field(30.0, gt=0, le=24 * 60)
    # Chats open at once, from one address (429 over it) and in all (503). They take
    # none of the call slots (max_concurrent_calls): they carry no media.
    max_chats_per_address: int = Field(3, ge=1, le=1000)
    max_chats: int = Field(200, ge=1, le=100_000)
    # Verifying callers (engine/customers.py): wrong answers (PIN, date of birth, last 4
    # digits) before the customer is locked, and for how many minutes; once it is over,
    # each further wrong answer locks again until a right one.
    verify_max_failures: int = Field(5, ge=1, le=100)
    verify_lockout_minutes: float = Field(15.0, gt=0, le=7 * 24 * 60)
    # Checks the customer tokens of the business's app (engine/apptoken.py): a shared
    # secret (HS256/384/512) or a PEM public key (RS256, ES256, EdDSA); unset: refused.
    customer_token_key: SecretStr | None = None
    # Product names recognised as facts when a caller says them.
    products: list[str] = Field(default_factory=list)
    # Extra redaction patterns {name: regex} replacing the defaults (SSN, card security
    # code); Luhn-valid card numbers are always redacted.
    redact_patterns: dict[str, str] | None = None
    # TOML file of queues ([[queues]] tables); unset: one queue, "general".
    queues: str | None = None
    # Seconds an agent's phone rings before the call goes to the next agent.
    offer_timeout: float = Field(20.0, gt=0, le=300)
    # The wallboard's service level: the share of today's callers (UTC day) answered
    # within this many seconds of joining the line.
    service_level_seconds: float = Field(20.0, gt=0, le=3600)
    # Seconds an agent whose every desk (agent page, ``ccengine phone``) has closed its
    # event stream keeps their presence before they are set away: a reload or a blink
    # of the network within it changes nothing (engine/liveness.py).
    agent_disconnect_after: float = Field(10.0, gt=0, le=300)
    # Seconds an agent has to give a finished call its disposition (CCENGINE_WRAPUP_SECONDS):
    # past it the engine stores "timed-out" and makes them available again. 0: no limit
    # (they stay in wrap-up until they save it; "available" is refused meanwhile).
    wrapup_seconds: float = Field(0.0, ge=0, le=86_400)
    # What an agent may choose at wrap-up, in the order the softphone lists them.
    dispositions: list[str] = Field(
        default_factory=lambda: [
            "resolved",
            "follow_up",
            "callback_scheduled",
            "transferred",
            "not_resolved",
        ],
        min_length=1,
    )
    # Signs login tokens. Unset: a random key kept in ``secret_key_file``.
    secret_key: SecretStr | None = None
    secret_key_file: str = "./.ccengine-secret"
    token_ttl: int = Field(12 * 3600, ge=60, description="seconds a login stays valid")
    log_level: str = "INFO"
    # Anyone may start an in-app call (as anyone may dial a phone number). False: only
    # holders of a control key, or of a caller token your backend asked us for.
    public_calls: bool = True
    caller_token_ttl: int = Field(4 * 3600, ge=60, description="seconds")
    # Requests a minute per API key (unless the key says otherwise), person and call;
    # and per address for requests without credentials (sign-in, starting calls).
    rate_per_minute: int = Field(600, ge=1)
    anonymous_rate_per_minute: int = Field(120, ge=1)
    # Origins (https://app.example.com) whose pages may call the API with credentials.
    cors_origins: list[str] = Field(default_factory=list)
    # Origins besides the engine's own (and cors_origins) whose pages may use the
    # sign-in cookies and open WebSockets: the public address when a proxy in front
    # rewrites the Host header.
    allowed_origins: list[str] = Field(default_factory=list)
    # Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For and
    # X-Forwarded-Proto are believed; from anyone else those headers are ignored.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Networks (CIDR) that webhooks may reach although they are loopback, private,
    # link-local or otherwise not public: ["10.20.0.0/16"]; empty: public addresses only.
    webhook_allowed_networks: list[str] = Field(default_factory=list)
    # STUN/TURN servers for WebRTC, used by the engine's own peer connections and handed
    # to the pages (GET /api/v1/ice-servers), as JSON: [{"urls": "turn:turn.example.com",
    # "username": "u", "credential": "p"}]. Empty: none, host candidates only, and no
    # request to any outside server.
    ice_servers: list[IceServer] = Field(default_factory=list)
    # Where call recordings (dual-channel WAV) are kept.
    recordings_dir: str = "./recordings"
    # Days the event log keeps events for streams to resume from.
    event_retention_days: float = Field(7.0, gt=0)
    # Webhook deliveries: tries, then exponential backoff base and cap in seconds (full
    # jitter), and how long one try may take.
    webhook_max_attempts: int = Field(10, ge=1, le=50)
    webhook_retry_base: float = Field(2.0, gt=0)
    webhook_retry_cap: float = Field(3600.0, gt=0)
    webhook_timeout: float = Field(10.0, gt=0, le=60)
    # Redis (redis://host:6379/0, rediss:// for TLS) shared by engines on one database:
    # one order of event ids for all of them, and every engine's streams carry every
    # engine's events. Empty: events stay within this process (one engine).
    redis_url: str = ""
    # Prefix of the keys in that Redis: engines sharing a database share a prefix.
    redis_prefix: str = "ccengine"
    # Seconds without a heartbeat after which another engine on the same database takes
    # this one for dead and ends its calls (a restart on the same host does not wait).
    engine_lease: float = Field(60.0, ge=4, le=3600)
    # Where the other engines reach this one's API, to send it requests for the calls it
    # runs (engine/forward.py). Empty: http://<host>:<port>, with this host's address
    # when listening on every address (0.0.0.0).
    node_url: str = ""
    # Draining (engine/drain.py: SIGTERM, or POST /api/v1/node/drain): new calls get
    # 503 and the process exits once its calls end, or after this many seconds, ending
    # those left (reason node_drained). Kubernetes: terminationGracePeriodSeconds above it.
    drain_timeout: float = Field(3600.0, gt=0, le=86400)

    # SIP phone calls (UDP and TCP on one port).
    sip_enabled: bool = True
    sip_port: int = Field(5060, ge=0, le=65535)
    sip_host: str = "127.0.0.1"
    # The address phones and trunks reach us at, put in SDP and Contact (NAT). Unset:
    # sip_host.
    sip_public_host: str | None = None
    sip_realm: str = "ccengine"
    # Addresses or networks (CIDR) of carrier trunks, admitted without a password.
    sip_trunks: list[str] = Field(default_factory=list)
    # A phone call takes RTP only from the address its SDP signalled and the host its
    # SIP came from; add networks (CIDR) here whose RTP any call should also take (a
    # carrier whose media gateways are not the address it signals, a SIP proxy in front
    # of phones behind NAT). "0.0.0.0/0" takes anyone's: the first sender wins the call.
    sip_rtp_sources: list[str] = Field(default_factory=list)
    # SIP users (desk phones, softphones) and their digest passwords.
    sip_users: dict[str, SecretStr] = Field(default_factory=dict)
    # Wrong SIP digest answers within a minute before the address, or the user name,
    # is refused (503 with Retry-After) for sip_auth_lockout seconds, doubled for each
    # repeat within a day (at most 15 minutes). A user's lockout does not apply from an
    # address it signed in from in the last day.
    sip_auth_max_failures_per_address: int = Field(10, ge=1, le=1000)
    sip_auth_max_failures_per_user: int = Field(5, ge=1, le=1000)
    sip_auth_lockout: float = Field(30.0, gt=0, le=900)
    # Numbers (Request-URI users) answered by the contact center; others get 404.
    sip_numbers: list[str] = Field(default_factory=lambda: ["support", "1000"])
    # The carrier trunk for calls we place (callbacks): "host:port", and the digest
    # credentials it asks for. Unset: no outbound calls.
    sip_trunk: str | None = None
    sip_trunk_username: str | None = None
    sip_trunk_password: SecretStr | None = None
    # Register to the trunk as sip_trunk_username (behind NAT or on a dynamic address),
    # asking for this many seconds, refreshed before they run out.
    sip_trunk_register: bool = False
    sip_trunk_register_expires: int = Field(600, ge=60, le=86400)
    # The caller id (From user) on calls we place.
    sip_caller_id: str = "ccengine"
    # Hosts (names or addresses) that outbound calls and transfers may reach by SIP URI
    # (sip:partner@pbx.example.com) rather than through the trunk; empty: none.
    sip_dial_domains: list[str] = Field(default_factory=list)
    # Prefixes every number dialled through the trunk must start with (consults,
    # transfers, the dial pad, callbacks), e.g. ["+1", "+44"]: set this in production,
    # or anyone signed in may dial any number at the contact center's cost (premium
    # rate, international, a carrier's feature codes). Empty: any number.
    # engine/dialpolicy.py.
    sip_dial_prefixes: list[str] = Field(default_factory=list)
    # Seconds a callback rings before we give up on it.
    callback_ring_timeout: float = Field(45.0, gt=0, le=300)
    # The key menu a phone caller hears first; empty: none.
    ivr_prompt: str = (
        "Thank you for calling. Press 1 for billing, 2 for technical support, "
        "or 0 to speak with a person. Or just tell me how I can help."
    )
    # Keys of the menu and the skill each one chooses (0 is an escalation rule).
    ivr_keys: dict[str, str] = Field(
        default_factory=lambda: {"1": "billing", "2": "technical_support"}
    )

    @field_validator("sip_dial_prefixes")
    @classmethod
    def _prefixes(cls, prefixes: list[str]) -> list[str]:
        for prefix in prefixes:
            if not re.fullmatch(r"\+?[0-9]{1,15}", prefix):
                raise ValueError(f"{prefix!r} is not a number prefix like +1 or +44")
        return prefixes

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or len(parts.path) > 1:
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return origins

    @field_validator("trusted_proxies", "webhook_allowed_networks", "sip_rtp_sources")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an address or a CIDR network") from None
        return networks


@lru_cache
def get_settings() -> Settings:
    return Settings()


def node_url(settings: Settings) -> str:
    """This engine's URL for the other engines (``node_url``, else made from where it
    listens)."""
    if settings.node_url:
        return settings.node_url.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        # the address this host sends from (no packet is sent: a UDP socket is only
        # pointed somewhere); the host name may resolve to 127.0.1.1 (Debian)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never used, always routed
                host = probe.getsockname()[0]
        except OSError:
            host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"
