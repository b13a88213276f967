"""SIPp as the phone: scenarios, RTP captures it plays, and a runner.

The captures are made here from test speech: 8 kHz G.711 in 20 ms RTP packets,
written as a pcap that SIPp's ``play_pcap_audio`` replays in real time towards
the address our SDP answer gives. DTMF captures are RFC 4733 events, with or
without the marker bit and with as many end packets as a test wants.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiortp.codecs import get_codec

from tests.engine_proc import free_port

SIPP = shutil.which("sipp") or "/usr/bin/sipp"


# -- captures ---------------------------------------------------------------------------


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def write_pcap(path: Path, packets: list[tuple[float, bytes]], port: int = 6000) -> Path:
    """UDP datagrams (time, RTP bytes) as an Ethernet/IPv4 pcap."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for t, payload in packets:
        udp = struct.pack("!HHHH", port, port, 8 + len(payload), 0) + payload
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
            bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
        )  # fmt: skip
        ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
        sec = int(t)
        out.append(struct.pack("<IIII", sec, int((t - sec) * 1e6), len(frame), len(frame)))
        out.append(frame)
    path.write_bytes(b"".join(out))
    return path


def _rtp(pt: int, marker: bool, seq: int, ts: int, payload: bytes, ssrc: int = 0x1234ABCD) -> bytes:
    return (
        struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts, ssrc) + payload
    )


def g711_packets(pcm: np.ndarray, payload_type: int = 0) -> tuple[list[tuple[float, bytes]], bytes]:
    """20 ms RTP packets of ``pcm`` (int16 at the codec's rate: 8 kHz for G.711, 16 kHz
    for G.722), and the encoded bytes (what we decode offline)."""
    codec = get_codec(payload_type)
    n = codec.sample_rate // 50  # samples in 20 ms
    frames = [pcm[i : i + n] for i in range(0, len(pcm) - n + 1, n)]
    payloads = [codec.encode(f.astype("<i2").tobytes()) for f in frames]
    packets = [
        (i * 0.02, _rtp(payload_type, i == 0, i, i * 160, p)) for i, p in enumerate(payloads)
    ]
    return packets, b"".join(payloads)


@dataclass(frozen=True)
class Key:
    digit: str
    at: float  # seconds into the stream
    marker: bool = True
    end_repeats: int = 3  # RFC 4733 §2.5.1.4 says three


def phone_stream(
    pcm8k: np.ndarray,
    keys: list[Key] = (),
    payload_type: int = 0,
    dtmf_type: int = 101,  # type: ignore[assignment]
) -> list[tuple[float, bytes]]:
    """One RTP stream as a phone sends it: 20 ms G.711 packets, replaced by RFC 4733
    telephone-events (100 ms of progress packets, then the end packets) while a key is
    down, on one sequence-number space."""
    codes = {**{str(i): i for i in range(10)}, "*": 10, "#": 11}
    codec = get_codec(payload_type)
    slots: dict[int, bytes] = {}
    n = len(pcm8k) // 160
    for key in keys:
        first = int(key.at / 0.02)
        ts = first * 160
        for k in range(5 + key.end_repeats):
            end = k >= 5
            duration = 800 if end else (k + 1) * 160
            payload = struct.pack("!BBH", codes[key.digit], (0x80 if end else 0) | 10, duration)
            slots[first + k] = _rtp(dtmf_type, key.marker and k == 0, first + k, ts, payload)
    packets = []
    for i in range(n):
        data = slots.get(i)
        if data is None:
            audio = codec.encode(pcm8k[i * 160 : (i + 1) * 160].astype("<i2").tobytes())
            data = _rtp(payload_type, i == 0, i, i * 160, audio)
        packets.append((i * 0.02, data))
    return packets


def decode_g711(encoded: bytes, payload_type: int = 0) -> np.ndarray:
    codec = get_codec(payload_type)
    if payload_type == 9:  # G.722 keeps state: decode packet by packet, as a phone would
        return np.concatenate(
            [np.frombuffer(codec.decode(encoded[i : i + 160]), dtype="<i2")
             for i in range(0, len(encoded), 160)]
        )  # fmt: skip
    return np.frombuffer(codec.decode(encoded), dtype="<i2")


# -- scenarios ----------------------------------------------------------------------------

SDP = """v=0
o=caller 53655765 2353687637 IN IP4 [local_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP {codecs} 101
{rtpmaps}a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
"""
RTPMAPS = {
    0: "a=rtpmap:0 PCMU/8000\n",
    8: "a=rtpmap:8 PCMA/8000\n",
    9: "a=rtpmap:9 G722/8000\n",
    18: "a=rtpmap:18 G729/8000\n",
}


def _invite(branch: str, cseq: int, caller: str, codecs: tuple[int, ...], auth: str = "") -> str:
    sdp = SDP.format(codecs=" ".join(map(str, codecs)), rtpmaps="".join(RTPMAPS[c] for c in codecs))
    return f"""<send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]t[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: {cseq} INVITE
Contact: <sip:{caller}@[local_ip]:[local_port]>
Max-Forwards: 70
{auth}Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
"""


def _ack(branch: str, cseq: int, caller: str) -> str:
    return f"""<send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]t[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: {cseq} ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
"""


def _bye(cseq: int, caller: str) -> str:
    return f"""<send retrans="500"><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]t[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: {cseq} BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
<recv response="200" crlf="true"/>
"""


ANSWERED = """<recv response="100" optional="true"/>
<recv response="180" optional="true"/>
<recv response="200" rtd="true"/>
"""
WAIT_BYE = """<recv request="BYE"/>
<send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"""


def play(pcap: Path, seconds: float) -> str:
    """Send the capture and wait ``seconds`` (0: go on at once; it plays meanwhile)."""
    step = f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
    if seconds:
        step += f'<pause milliseconds="{int(seconds * 1000)}"/>\n'
    return step


def reinvite(cseq: int, direction: str, expect: str, caller: str = "15551230001") -> str:
    """A re-INVITE changing the direction (sendonly: hold, sendrecv: resume); the 200
    must carry ``expect`` in its SDP (RFC 3264 §8.4)."""
    sdp = SDP.format(codecs="0", rtpmaps=RTPMAPS[0]) + f"a={direction}\n"
    return f"""<send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK[pid]r{cseq}x[call_number]
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]t[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: {cseq} INVITE
Contact: <sip:{caller}@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
<recv response="100" optional="true"/>
<recv response="200"><action>
<ereg regexp="a={expect}" search_in="body" check_it="true" assign_to="dir{cseq}"/>
</action></recv>
<Reference variables="dir{cseq}"/>
""" + _ack(f"z9hG4bK[pid]a{cseq}x[call_number]", cseq, caller)


def register_scenario(user: str, password: str, expires: int, expect: int = 200) -> str:
    """REGISTER, answer the 401, expect the binding back with its expiry."""

    def reg(cseq: int, auth: str) -> str:
        return f"""<send retrans="500"><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{user}@[remote_ip]>;tag=[pid]r[call_number]
To: <sip:{user}@[remote_ip]>
Call-ID: [call_id]
CSeq: {cseq} REGISTER
Contact: <sip:{user}@[local_ip]:[local_port]>
Expires: {expires}
{auth}Max-Forwards: 70
Content-Length: 0

]]></send>
"""

    check = (
        ""
        if expires == 0 or expect != 200
        else (
            '<action><ereg regexp="expires=[0-9]+" search_in="hdr" header="Contact:" '
            'check_it="true" assign_to="e"/></action>'
        )
    )
    return _wrap(
        reg(1, "")
        + '<recv response="401" auth="true"/>\n'
        + reg(2, f"[authentication username={user} password={password}]\n")
        + f'<recv response="{expect}">{check}</recv>\n'
        + ('<Reference variables="e"/>\n' if check else "")
    )


def _inviting(
    caller: str, password: str | None, codecs: tuple[int, ...], extra: str = ""
) -> tuple[list[str], int]:
    """The INVITE, first answering a 401 with credentials when ``password`` is set;
    the steps and the CSeq number of the INVITE that counts. ``extra``: header lines."""
    if password is None:
        return [_invite("z9hG4bK[pid]b[call_number]", 1, caller, codecs, extra)], 1
    auth = f"[authentication username={caller} password={password}]\n"
    return [
        _invite("z9hG4bK[pid]a[call_number]", 1, caller, codecs, extra),
        '<recv response="100" optional="true"/>\n<recv response="401" auth="true"/>\n',
        _ack("z9hG4bK[pid]a[call_number]", 1, caller),
        _invite("z9hG4bK[pid]b[call_number]", 2, caller, codecs, auth + extra),
    ], 2


def call_scenario(
    *media: str,
    caller: str = "15551230001",
    password: str | None = None,
    hangup: str = "caller",  # "caller": we send BYE; "engine": we wait for its BYE
    codecs: tuple[int, ...] = (0,),
    bye_cseq: int | None = None,
    headers: tuple[str, ...] = (),
) -> str:
    """INVITE (answering a 401 when ``password`` is set), ACK, the media steps, hang-up.
    ``headers``: more header lines for the INVITE (a carrier's ``Identity``)."""
    extra = "".join(f"{h}\n" for h in headers)
    steps, cseq = _inviting(caller, password, codecs, extra)
    steps += [ANSWERED, _ack("z9hG4bK[pid]c[call_number]", cseq, caller), *media]
    steps.append(_bye(bye_cseq or cseq + 1, caller) if hangup == "caller" else WAIT_BYE)
    return _wrap("".join(steps))


def _in_dialog(method: str, branch: str, cseq: int, caller: str) -> str:
    """``method`` inside the dialog along its route set: to the engine's Contact, through
    every proxy that record-routed (RFC 3261 §12.2.1.1), as a phone behind Kamailio."""
    return f"""<send{' retrans="500"' if method == "BYE" else ""}><![CDATA[
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]t[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: {cseq} {method}
[routes]
Max-Forwards: 70
Content-Length: 0

]]></send>
"""


def proxied_call_scenario(*media: str, caller: str = "15551230001") -> str:
    """A call through a proxy that record-routes: INVITE, ACK and BYE along the route
    set the 200 OK gave, the ``media`` steps between."""
    steps, cseq = _inviting(caller, None, (0,))
    steps += [
        '<recv response="100" optional="true"/>\n<recv response="180" optional="true"/>\n',
        '<recv response="200" rrs="true" rtd="true"/>\n',
        _in_dialog("ACK", "z9hG4bK[pid]c[call_number]", cseq, caller),
        *media,
        _in_dialog("BYE", "[branch]", cseq + 1, caller),
        '<recv response="200" crlf="true"/>\n',
    ]
    return _wrap("".join(steps))


def rejected_scenario(status: int, *, caller: str = "15551230001", password: str | None = None,
                      codecs: tuple[int, ...] = (0,)) -> str:  # fmt: skip
    """An INVITE (with credentials after the 401 when ``password`` is set) that must get
    ``status``; the ACK for it carries the INVITE's branch, as RFC 3261 §17.1.1.3 asks."""
    branch = "z9hG4bK[pid]b[call_number]"
    steps, cseq = _inviting(caller, password, codecs)
    steps += [
        '<recv response="100" optional="true"/>\n<recv response="180" optional="true"/>\n',
        f'<recv response="{status}"/>\n',
        _ack(branch, cseq, caller),
    ]
    return _wrap("".join(steps))


_UAS_HEAD = """[last_Via:]
[last_From:]
[last_To:];tag=[pid]u[call_number]
[last_Call-ID:]
[last_CSeq:]"""


def _answer(pcap: Path, head: str = _UAS_HEAD) -> str:
    """Ring, answer with our SDP, take the ACK, talk (``pcap``), wait for the BYE."""
    sdp = SDP.format(codecs="0", rtpmaps=RTPMAPS[0])
    return f"""<send><![CDATA[
SIP/2.0 180 Ringing
{head}
Contact: <sip:phone@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
<send retrans="500"><![CDATA[
SIP/2.0 200 OK
{head}
Contact: <sip:phone@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
<recv request="ACK"/>
{play(pcap, 0)}{WAIT_BYE}"""


def desk_phone_scenario(pcap: Path, *, proxied: bool = False) -> str:
    """An agent's desk phone: it rings, the agent picks up and talks. ``proxied``: the
    INVITE comes through a proxy that record-routes (the edge), and the answers copy its
    Record-Route, as RFC 3261 §12.1.1 asks of a phone."""
    head = _UAS_HEAD + "\n[last_Record-Route:]" if proxied else _UAS_HEAD
    return _wrap(f'<recv request="INVITE"/>\n{_answer(pcap, head)}')


def trunk_uas_scenario(pcap: Path, user: str, password: str) -> str:
    """A carrier trunk and the customer's phone behind it: challenge the INVITE, check the
    credentials (403 when wrong), answer, play ``pcap``, wait for the engine's BYE."""
    head = _UAS_HEAD
    return _wrap(f"""<recv request="INVITE"/>
<send><![CDATA[
SIP/2.0 401 Unauthorized
{head}
WWW-Authenticate: Digest realm="carrier.test", nonce="[pid]n[call_number]", algorithm=MD5
Content-Length: 0

]]></send>
<recv request="ACK"/>
<recv request="INVITE"><action>
<verifyauth assign_to="authvalid" username="{user}" password="{password}"/>
</action></recv>
<nop hide="true" test="authvalid" next="good"/>
<send><![CDATA[
SIP/2.0 403 Forbidden
{head}
Content-Length: 0

]]></send>
<recv request="ACK" next="end"/>
<label id="good"/>
{_answer(pcap)}<label id="end"/>
""")


def registrar_scenario(user: str, password: str, first_expiry: int) -> str:
    """A carrier's registrar: challenge, check the credentials, grant ``first_expiry``
    seconds, and expect the refresh (challenged and checked again) before they run out."""
    head = """[last_Via:]
[last_From:]
[last_To:];tag=[pid]g[call_number]
[last_Call-ID:]
[last_CSeq:]"""

    def round_(n: int, expiry: int, timeout: int) -> str:
        return f"""<recv request="REGISTER" timeout="{timeout * 1000}"/>
<send><![CDATA[
SIP/2.0 401 Unauthorized
{head}
WWW-Authenticate: Digest realm="carrier.test", nonce="[pid]n{n}", algorithm=MD5
Content-Length: 0

]]></send>
<recv request="REGISTER"><action>
<verifyauth assign_to="ok{n}" username="{user}" password="{password}"/>
</action></recv>
<nop hide="true" test="ok{n}" next="good{n}"/>
<recv request="NEVER" timeout="100"/>
<label id="good{n}"/>
<send><![CDATA[
SIP/2.0 200 OK
{head}
[last_Contact:];expires={expiry}
Content-Length: 0

]]></send>
"""

    # the refresh must come before the first registration runs out
    return _wrap(round_(1, first_expiry, 30) + round_(2, 3600, first_expiry))


def cancel_scenario(caller: str = "15551230001") -> str:
    branch = "z9hG4bK[pid]b[call_number]"
    cancel = f"""<send><![CDATA[
CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]t[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

]]></send>
"""
    # CANCEL as soon as the 100 arrives, while the engine is still setting the call up
    steps = [
        _invite(branch, 1, caller, (0,)),
        '<recv response="100"/>\n',
        cancel,
        '<recv response="180" optional="true"/>\n',
        '<recv response="200"/>\n',
        '<recv response="487"/>\n',
        _ack(branch, 1, caller),
    ]
    return _wrap("".join(steps))


def _wrap(body: str) -> str:
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
        '<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
        f'<scenario name="ccengine test">\n{body}</scenario>\n'
    )


# -- running ----------------------------------------------------------------------------


@dataclass
class SippResult:
    returncode: int
    messages: str
    errors: str
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def start(
    scenario: str,
    workdir: Path,
    target: str | None,
    *,
    service: str = "support",
    transport: str = "u1",
    timeout: float = 90,
    local_ip: str = "127.0.0.1",
    name: str = "call",
    extra: tuple[str, ...] = (),
    media_port: int | None = None,
    sip_port: int | None = None,
) -> tuple[subprocess.Popen[str], Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    media_port = media_port or free_port()
    xml = workdir / f"{name}.xml"
    xml.write_text(scenario)
    cmd = [
        SIPP, *([target] if target else []), "-sf", str(xml), "-s", service, "-m", "1",
        "-l", "1", "-i", local_ip, "-p", str(sip_port or free_port()),
        "-mi", local_ip, "-mp", str(media_port),
        "-t", transport, "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-trace_msg", "-message_file", str(workdir / f"{name}.messages.log"),
        "-trace_err", "-error_file", str(workdir / f"{name}.errors.log"),
        "-nostdin", "-max_recv_loops", "1000", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    return proc, workdir / name


def finish(proc: subprocess.Popen[str], base: Path, timeout: float = 120) -> SippResult:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    messages = base.with_suffix(".messages.log")
    errors = base.with_suffix(".errors.log")
    return SippResult(
        proc.returncode,
        messages.read_text(errors="replace") if messages.exists() else "",
        errors.read_text(errors="replace") if errors.exists() else "",
        out[-3000:],
    )


def phone_pcap(
    wav: Path, out: Path, lead: float = 0.5, repeat: int = 1
) -> tuple[Path, bytes, float]:
    """A speech WAV as a phone sends it: 300-3400 Hz at 8 kHz, G.711 u-law RTP, said
    ``repeat`` times (a caller who keeps talking). Returns the capture, the encoded
    audio, and its length in seconds."""
    from media.wavtrack import read_wav_mono
    from tests import speech

    band = speech.sox(wav, out.with_suffix(".8k.wav"), ["highpass", "300", "lowpass", "3400"],
                      rate=8000)  # fmt: skip
    pcm, _ = read_wav_mono(str(band))
    pcm = np.concatenate([np.zeros(int(8000 * lead), dtype=np.int16), *[pcm] * repeat])
    packets, encoded = g711_packets(pcm)
    return write_pcap(out, packets), encoded, len(packets) * 0.02


def run(scenario: str, workdir: Path, target: str, **kw: object) -> SippResult:
    proc, base = start(scenario, workdir, target, **kw)  # type: ignore[arg-type]
    return finish(proc, base)
