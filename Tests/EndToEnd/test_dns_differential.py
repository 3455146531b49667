"""Differential test of Sluice's DNS codec against dnspython.

Starts the real `sluice` binary (SLUICE_BIN) as `sluice debug dns-parse [--tcp]`, which prints
what the codec in Sources/L7Parsers/DNS decoded from the bytes on stdin (or a file), and decodes
the same bytes with `dns.message.from_wire` from dnspython. No root, no sockets.

Three families:
- generated valid messages (fixed seed): queries and responses built with dnspython, with
  compressed names, awkward label bytes, EDNS options, A/AAAA/CNAME/NS/PTR answers and records
  the codec only carries (MX, SOA, TXT, SRV, private types). Both sides must decode the same
  header, questions, records and EDNS;
- hostile messages built byte by byte: compression loops, forward and out-of-range pointers,
  over-long names, reserved label types, every truncation of a valid message, trailing bytes,
  lying counts, misplaced or doubled OPT records, rdata of the wrong size. Both sides must
  agree on accept/reject; where dnspython's rules differ from the codec's on purpose, the case
  states Sluice's expectation explicitly and names dnspython's behaviour (see DIVERGENT);
- TCP framing (RFC 1035 §4.2.2, "the message is prefixed with a two byte length field"):
  several messages in one buffer, a message cut by the end of the stream, a zero-length frame.

dnspython is asked for `one_rr_per_rrset=True` so that it keeps every record in wire order with
its own TTL (by default it merges records into RRsets and keeps the smallest TTL).
"""
import ipaddress
import json
import random
import struct
import subprocess

import dns.edns
import dns.flags
import dns.ipv4
import dns.ipv6
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset
import pytest

from conftest import SLUICE

SEED = 0xD_2_5
GENERATED_MESSAGES = 120

IN, CH = dns.rdataclass.IN, dns.rdataclass.CH
A, AAAA, CNAME, NS, PTR = 1, 28, 5, 2, 12
OPT, TSIG, MX = 41, 250, 15
PRIVATE_TYPE = 65280


# --- The two decoders --------------------------------------------------------------------

def sluice(data, tcp=False, path=None):
    """Sluice's JSON for `data` (or for the file at `path`)."""
    command = [SLUICE, "debug", "dns-parse", *(["--tcp"] if tcp else []), *([str(path)] if path else [])]
    feed = {"stdin": subprocess.DEVNULL} if path else {"input": data}
    completed = subprocess.run(command, capture_output=True, timeout=30, **feed)
    try:
        return json.loads(completed.stdout)
    except ValueError:
        pytest.fail(f"`{' '.join(command[1:])}` printed no JSON (exit {completed.returncode}) "
                    f"for {data.hex()}: {completed.stderr.decode(errors='replace')}")


def ipv6_text(packed):
    # The codec prints Python's `ipaddress` compressed form (RFC 5952, all hex: Python before
    # 3.13 prints ::ffff:102:304, not dnspython's ::ffff:1.2.3.4).
    return ipaddress.IPv6Address(packed).compressed


def record_view(rrset, rdata):
    view = {"name": rrset.name.to_text(), "type": int(rrset.rdtype), "class": int(rrset.rdclass), "ttl": rrset.ttl}
    if rrset.rdtype == A and rrset.rdclass == IN:
        view["address"] = str(ipaddress.IPv4Address(dns.ipv4.inet_aton(rdata.address)))
    elif rrset.rdtype == AAAA and rrset.rdclass == IN:
        view["address"] = ipv6_text(dns.ipv6.inet_aton(rdata.address))
    elif rrset.rdtype in (CNAME, NS, PTR):
        view["target"] = rdata.target.to_text()
    else:
        # Uncompressed: names inside MX or SOA rdata may be compressed on the wire (see
        # `same_rdata`).
        view["rdata"] = rdata.to_wire().hex()
    return view


class Decoded:
    """What dnspython made of one message: the view in Sluice's JSON shape, and the rdata objects."""

    def __init__(self, wire):
        self.wire = wire
        try:
            message = dns.message.from_wire(wire, one_rr_per_rrset=True)
        except Exception as error:  # noqa: BLE001 - any exception is dnspython's "reject"
            self.view, self.rdatas = {"ok": False, "error": type(error).__name__}, {}
            return
        self.view = {
            "ok": True,
            "id": message.id,
            "flags": int(message.flags),
            "questions": [{"name": q.name.to_text(), "type": int(q.rdtype), "class": int(q.rdclass)}
                          for q in message.question],
        }
        self.rdatas = {}
        for key, section in (("answers", message.answer), ("authority", message.authority),
                             ("additional", message.additional)):
            self.view[key] = [record_view(rrset, rdata) for rrset in section for rdata in rrset]
            self.rdatas[key] = [rdata for rrset in section for rdata in rrset]
        if message.opt is None:
            self.view["edns"] = None
        else:
            ttl = message.opt.ttl
            self.view["edns"] = {
                "payload": message.opt.rdclass,
                "rcode_high": ttl >> 24,
                "version": (ttl >> 16) & 0xFF,
                "flags": ttl & 0xFFFF,
                "options": [[int(option.otype), option.to_wire().hex()] for option in message.opt[0].options],
            }

    @property
    def accepted(self):
        return self.view["ok"]


def same_rdata(wire, rdata, printed_hex):
    """Sluice prints rdata as on the wire; dnspython re-encodes it without compression. The two
    agree when Sluice's bytes are dnspython's, or when they occur in the message at a place where
    dnspython decodes them (with the message's compression) to the same rdata."""
    raw = bytes.fromhex(printed_hex)
    if raw == rdata.to_wire():
        return True
    start = wire.find(raw)
    while start >= 0:
        try:
            if dns.rdata.from_wire(rdata.rdclass, rdata.rdtype, wire, start, len(raw)) == rdata:
                return True
        except Exception:  # noqa: BLE001 - not this occurrence
            pass
        start = wire.find(raw, start + 1)
    return False


def comparable(ours, theirs):
    """Sluice's view with each carried rdata replaced by dnspython's form when they are the same
    rdata (see `same_rdata`), so that one equality shows every difference at once."""
    if not ours.get("ok") or not theirs.accepted:
        return ours
    ours = json.loads(json.dumps(ours))
    for key, rdatas in theirs.rdatas.items():
        for record, expected, rdata in zip(ours.get(key, []), theirs.view[key], rdatas):
            if "rdata" in record and "rdata" in expected and record["rdata"] != expected["rdata"]:
                if same_rdata(theirs.wire, rdata, record["rdata"]):
                    record["rdata"] = expected["rdata"]
    return ours


def assert_agree(wire, ours=None):
    """Same accept/reject, and when both accept, the same decoded message."""
    ours = sluice(wire) if ours is None else ours
    theirs = Decoded(wire)
    assert ours.get("ok") == theirs.accepted, (
        f"accept/reject differs on {wire.hex()}\n  sluice:    {ours}\n  dnspython: {theirs.view}")
    if theirs.accepted:
        assert comparable(ours, theirs) == theirs.view, f"decoded differently: {wire.hex()}"
    return ours


# --- Generated valid messages ------------------------------------------------------------

# Bytes that dnspython escapes in to_text(), and bytes outside 0x21..0x7e (printed as \DDD).
AWKWARD_BYTES = b'."\\()@$; \x00\x1f\x7f\x80\xff'
SUFFIXES = [["example", "com"], ["Example", "COM"], ["svc", "cluster", "local"], ["com"], [], ["ip6", "arpa"]]


def random_label(rng):
    if rng.random() < 0.03:
        return bytes(rng.choice(b"abcdefghij") for _ in range(63))
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*"
    label = bytearray(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
    if rng.random() < 0.2:
        label[rng.randrange(len(label))] = rng.choice(AWKWARD_BYTES)
    return bytes(label)


def random_name(rng, names):
    if names and rng.random() < 0.3:
        return rng.choice(names)  # the same name again: a whole-name pointer
    while True:
        labels = [random_label(rng) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
        labels += [part.encode() for part in rng.choice(SUFFIXES)] + [b""]
        try:
            name = dns.name.Name(labels)
        except dns.name.NameTooLong:
            continue
        names.append(name)
        return name


def longest_name():
    """A name of exactly 255 bytes in wire form, the most RFC 1035 §2.3.4 allows."""
    name = dns.name.Name([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61, b""])
    assert len(name.to_wire()) == 255
    return name


def random_rdata(rng, names, rtype):
    if rtype == A:
        return dns.rdtypes.IN.A.A(IN, A, str(ipaddress.IPv4Address(rng.getrandbits(32))))
    if rtype == AAAA:
        packed = rng.choice([
            rng.getrandbits(128).to_bytes(16, "big"),
            bytes(10) + b"\xff\xff" + rng.getrandbits(32).to_bytes(4, "big"),  # IPv4-mapped
            b"\x20\x01\x0d\xb8" + bytes(11) + bytes([rng.randint(0, 255)]),   # long zero run
            bytes(16),
        ])
        return dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, str(ipaddress.IPv6Address(packed)))
    if rtype == CNAME:
        return dns.rdtypes.ANY.CNAME.CNAME(IN, CNAME, random_name(rng, names))
    if rtype == NS:
        return dns.rdtypes.ANY.NS.NS(IN, NS, random_name(rng, names))
    if rtype == PTR:
        return dns.rdtypes.ANY.PTR.PTR(IN, PTR, random_name(rng, names))
    if rtype == MX:  # dnspython compresses the exchange: Sluice must carry the pointer as is
        return dns.rdtypes.ANY.MX.MX(IN, MX, rng.randint(0, 65535), random_name(rng, names))
    if rtype == 6:
        return dns.rdtypes.ANY.SOA.SOA(IN, 6, random_name(rng, names), random_name(rng, names),
                                       *(rng.getrandbits(31) for _ in range(5)))
    if rtype == 16:
        return dns.rdtypes.ANY.TXT.TXT(IN, 16, [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 3))])
    if rtype == 33:
        return dns.rdtypes.IN.SRV.SRV(IN, 33, rng.randint(0, 65535), rng.randint(0, 65535),
                                      rng.randint(0, 65535), random_name(rng, names))
    # A type dnspython does not know: carried as GenericRdata, any length, any class.
    return dns.rdata.GenericRdata(rng.choice([IN, CH]), rtype, rng.randbytes(rng.choice([0, 1, 4, 16, 40])))


RECORD_TYPES = [A, A, AAAA, AAAA, CNAME, NS, PTR, MX, 6, 16, 33, PRIVATE_TYPE, PRIVATE_TYPE + 17]


def random_record(rng, names):
    rtype = rng.choice(RECORD_TYPES)
    rdata = random_rdata(rng, names, rtype)
    name = longest_name() if rng.random() < 0.03 else random_name(rng, names)
    return dns.rrset.from_rdata(name, rng.randint(0, 0x7FFFFFFF), rdata)


def random_options(rng):
    options = []
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        kind = rng.random()
        if kind < 0.3:  # RFC 7873 cookie: 8-byte client cookie, optionally an 8..32-byte server cookie
            server = rng.randbytes(rng.randint(8, 32)) if rng.random() < 0.5 else b""
            options.append(dns.edns.CookieOption(rng.randbytes(8), server))
        elif kind < 0.4:
            options.append(dns.edns.GenericOption(12, bytes(rng.randint(0, 30))))  # padding
        else:
            options.append(dns.edns.GenericOption(rng.choice([65001, 65534, 20292]), rng.randbytes(rng.randint(0, 20))))
    return options


def random_message(rng):
    names = []
    query = dns.message.make_query(random_name(rng, names), rng.choice([A, AAAA, CNAME, MX, 16, 33, 255, PRIVATE_TYPE]),
                                   rdclass=rng.choice([IN, IN, IN, CH]))
    query.id = rng.getrandbits(16)
    for _ in range(rng.choice([0, 0, 0, 1])):  # a second question: unusual, still well-formed
        query.find_rrset(query.question, random_name(rng, names), IN, rng.choice([A, AAAA]),
                         create=True, force_unique=True)
    with_edns = rng.random() < 0.6
    if with_edns:
        query.use_edns(rng.choice([0, 0, 1]), ednsflags=rng.choice([0, dns.flags.DO, 0x7FFF]),
                       payload=rng.choice([512, 1232, 4096, 65535]), options=random_options(rng))
    if rng.random() < 0.3:
        query.flags |= rng.choice([dns.flags.CD, dns.flags.AD, 0])
        return query
    response = dns.message.make_response(query)
    response.flags |= rng.choice([0, dns.flags.AA, dns.flags.RA | dns.flags.AD, dns.flags.TC])
    if with_edns:
        response.use_edns(0, ednsflags=rng.choice([0, dns.flags.DO]), payload=1232, options=random_options(rng))
    response.set_rcode(rng.choice([0, 0, 0, 2, 3, 5] + ([16, 23] if with_edns else [])))
    for section, most in ((response.answer, 6), (response.authority, 2), (response.additional, 3)):
        for _ in range(rng.randint(0, most)):
            section.append(random_record(rng, names))
    return response


def generated_wires():
    rng = random.Random(SEED)
    return [random_message(rng).to_wire() for _ in range(GENERATED_MESSAGES)]


GENERATED = generated_wires()


def test_generated_corpus_covers_the_codec():
    """The corpus must keep exercising compression, EDNS and every decoded record kind."""
    decoded = [Decoded(wire) for wire in GENERATED]
    assert all(d.accepted for d in decoded)
    types = {r["type"] for d in decoded for key in ("answers", "authority", "additional") for r in d.view[key]}
    assert {A, AAAA, CNAME, NS, PTR, MX, 6, 16, 33, PRIVATE_TYPE} <= types
    assert sum(d.view["edns"] is not None for d in decoded) > GENERATED_MESSAGES // 3
    assert any(d.view["edns"] and d.view["edns"]["options"] for d in decoded)
    assert sum(b"\xc0" in wire[12:] for wire in GENERATED) > GENERATED_MESSAGES // 2
    assert any("\\" in q["name"] for d in decoded for q in d.view["questions"])
    records = [r for d in decoded for key in ("answers", "authority", "additional") for r in d.view[key]]
    assert any(r["name"].startswith("a" * 63) for r in records)          # a 255-byte name
    assert any(r.get("address", "").startswith("::ffff:") for r in records)  # IPv4-mapped
    assert any(d.view["edns"] and d.view["edns"]["rcode_high"] for d in decoded)  # extended RCODE


@pytest.mark.parametrize("index", range(GENERATED_MESSAGES))
def test_generated_message_decodes_like_dnspython(index):
    ours = assert_agree(GENERATED[index])
    assert ours["ok"], ours


def test_file_argument_reads_like_stdin(tmp_path):
    path = tmp_path / "message.bin"
    path.write_bytes(GENERATED[1])
    assert sluice(GENERATED[1], path=path) == sluice(GENERATED[1])


# --- Hostile messages, built byte by byte -------------------------------------------------

def header(qd=0, an=0, ns=0, ar=0, ident=0x1234, flags=0x8180):
    return struct.pack("!6H", ident, flags, qd, an, ns, ar)


def labels(*parts, end=b"\x00"):
    return b"".join(bytes([len(part)]) + part for part in parts) + end


def pointer(offset):
    return struct.pack("!H", 0xC000 | offset)


def question(name, qtype=A, qclass=IN):
    return name + struct.pack("!HH", qtype, qclass)


def record(name, rtype, rclass, ttl, rdata):
    return name + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def opt_record(options=b"", owner=b"\x00", payload=1232, ttl=0):
    return record(owner, OPT, payload, ttl, options)


def option(code, data):
    return struct.pack("!HH", code, len(data)) + data


EXAMPLE = labels(b"example", b"com")           # at offset 12 when it is the first question
QUESTION = question(EXAMPLE)                    # offsets 12..28; the first answer starts at 29
ANSWER_A = record(pointer(12), A, IN, 300, bytes([192, 0, 2, 1]))


def pointer_chain(hops):
    """A response whose second answer's owner name reaches "a." through exactly `hops` pointers:
    the first answer carries (as opaque rdata) the name "a." followed by a chain of pointers, each
    to the one before it."""
    chain_start = 12 + len(QUESTION) + 2 + 10
    rdata = labels(b"a")
    previous = chain_start
    for _ in range(hops - 1):
        rdata += pointer(previous)
        previous = chain_start + len(rdata) - 2
    return (header(qd=1, an=2) + QUESTION + record(pointer(12), PRIVATE_TYPE, IN, 60, rdata)
            + record(pointer(previous), A, IN, 60, bytes(4)))


def mutual_pointers():
    """Two pointers to each other inside opaque rdata, and an owner name that enters the loop."""
    rdata_start = 12 + len(QUESTION) + 2 + 10
    rdata = pointer(rdata_start + 2) + pointer(rdata_start)
    return (header(qd=1, an=2) + QUESTION + record(pointer(12), PRIVATE_TYPE, IN, 60, rdata)
            + record(pointer(rdata_start + 2), A, IN, 60, bytes(4)))


def forward_pointer():
    """The question's name points at the answer's owner name, which comes later."""
    answer_offset = 12 + 2 + 4
    return header(qd=1, an=1) + question(pointer(answer_offset)) + record(EXAMPLE, A, IN, 60, bytes(4))


LONG_LABELS = (b"a" * 63, b"b" * 63, b"c" * 63)   # 192 bytes of labels, 193 with the root


class Case:
    def __init__(self, name, wire, sluice_accepts, dnspython_accepts=None, because=""):
        self.name, self.wire, self.sluice_accepts = name, wire, sluice_accepts
        self.dnspython_accepts = sluice_accepts if dnspython_accepts is None else dnspython_accepts
        self.because = because

    def __repr__(self):
        return self.name


HOSTILE = [
    # Compression (RFC 1035 §4.1.4) and names (§2.3.4).
    Case("pointer to itself", header(qd=1) + question(pointer(12)), False),
    Case("pointer back to its own name's start", header(qd=1) + question(labels(b"a", end=pointer(12))), False),
    Case("two pointers to each other", mutual_pointers(), False),
    Case("forward pointer", forward_pointer(), False),
    Case("out-of-range pointer 0x3fff", header(qd=1) + question(pointer(0x3FFF)), False),
    Case("pointer one past the end", header(qd=1) + question(pointer(18)), False),
    Case("pointer into the header reading the root", header(qd=1, ident=0x0000) + question(pointer(0)), True),
    Case("pointer into the header reading type 01", header(qd=1, ident=0x4100) + question(pointer(0)), False),
    Case("pointer to the question name", header(qd=1, an=1) + QUESTION + ANSWER_A, True),
    Case("pointer chain of 16 hops", pointer_chain(16), True),
    Case("pointer chain of 128 hops", pointer_chain(128), False),
    Case("pointer chain of 1000 hops", pointer_chain(1000), False),
    # Stricter than "a pointer points before itself": the codec takes dnspython's rule that each
    # pointer lands before the start of the name and before the previous pointer's target. Here
    # the pointer at 16 targets 13, inside the name's own first label (01 62 00, read as "b.").
    Case("pointer into an earlier label of the same name", header(qd=1) + question(b"\x03\x01b\x00" + pointer(13)), False),
    Case("name of 255 bytes", header(qd=1) + question(labels(*LONG_LABELS, b"d" * 61)), True),
    Case("name of 256 bytes", header(qd=1) + question(labels(*LONG_LABELS, b"d" * 62)), False),
    Case("name over 255 bytes through a pointer",
         header(qd=1, an=1) + question(labels(*LONG_LABELS)) + record(labels(b"e" * 63, end=pointer(12)), A, IN, 60, bytes(4)),
         False),
    Case("label length 64 (type 01)", header(qd=1) + question(b"\x40" + b"a" * 64 + b"\x00"), False),
    Case("label type 01 (0x41, extended label)", header(qd=1) + question(b"\x41\x00"), False),
    Case("label type 10 (0x80)", header(qd=1) + question(b"\x80\x00"), False),
    Case("label type 10 (0xbf)", header(qd=1) + question(b"\xbf" + b"a" * 63 + b"\x00"), False),
    Case("name without its root label at the end", header(qd=1) + b"\x07example\x03com", False),
    # Sections and counts.
    Case("header only", header(), True),
    Case("eleven bytes", header()[:11], False),
    Case("trailing byte", header(qd=1) + QUESTION + b"\x00", False),
    Case("trailing second header", header(qd=1) + QUESTION + header(), False),
    Case("question count larger than the section", header(qd=2) + QUESTION, False),
    Case("answer count larger than the section", header(qd=1, an=2) + QUESTION + ANSWER_A, False),
    Case("additional count larger than the section", header(qd=1, ar=1) + QUESTION, False),
    Case("rdlength past the end", header(qd=1, an=1) + QUESTION + ANSWER_A[:-1], False),
    # EDNS (RFC 6891 §6.1.1: "If a query message with more than one OPT RR is received, a
    # FORMERR (RCODE=1) MUST be returned"; the owner name MUST be 0, the root).
    Case("OPT with two options", header(qd=1, ar=1) + QUESTION + opt_record(option(10, bytes(8)) + option(65001, b"x")), True),
    Case("OPT with an empty option", header(qd=1, ar=1) + QUESTION + opt_record(option(65001, b"")), True),
    Case("two OPT records", header(qd=1, ar=2) + QUESTION + opt_record() + opt_record(), False),
    Case("OPT owner not the root", header(qd=1, ar=1) + QUESTION + opt_record(owner=pointer(12)), False),
    Case("OPT in the answer section", header(qd=1, an=1) + QUESTION + opt_record(), False),
    Case("OPT in the authority section", header(qd=1, ns=1) + QUESTION + opt_record(), False),
    Case("OPT option running past the rdata", header(qd=1, ar=1) + QUESTION + opt_record(struct.pack("!HH", 65001, 8) + b"abcd"), False),
    Case("OPT option header cut", header(qd=1, ar=1) + QUESTION + opt_record(b"\xfd\xe9\x00"), False),
    # Rdata of the decoded types.
    Case("A with 5-byte rdata", header(qd=1, an=1) + QUESTION + record(pointer(12), A, IN, 60, bytes(5)), False),
    Case("A with 3-byte rdata", header(qd=1, an=1) + QUESTION + record(pointer(12), A, IN, 60, bytes(3)), False),
    Case("A with empty rdata", header(qd=1, an=1) + QUESTION + record(pointer(12), A, IN, 60, b""), False),
    Case("AAAA with 15-byte rdata", header(qd=1, an=1) + QUESTION + record(pointer(12), AAAA, IN, 60, bytes(15)), False),
    Case("AAAA with 17-byte rdata", header(qd=1, an=1) + QUESTION + record(pointer(12), AAAA, IN, 60, bytes(17)), False),
    Case("CNAME target compressed", header(qd=1, an=1) + QUESTION + record(labels(b"www", end=pointer(12)), CNAME, IN, 60, pointer(12)), True),
    Case("CNAME target followed by a byte", header(qd=1, an=1) + QUESTION + record(pointer(12), CNAME, IN, 60, EXAMPLE + b"\x00"), False),
    Case("CNAME with empty rdata", header(qd=1, an=1) + QUESTION + record(pointer(12), CNAME, IN, 60, b""), False),
    Case("CNAME target running past the rdata", header(qd=1, an=1) + QUESTION + pointer(12)
         + struct.pack("!HHIH", CNAME, IN, 60, 3) + EXAMPLE, False),
    Case("NS target with label type 10", header(qd=1, an=1) + QUESTION + record(pointer(12), NS, IN, 60, b"\x81a\x00"), False),
    Case("PTR target with a forward pointer", header(qd=1, an=2) + QUESTION + record(pointer(12), PTR, IN, 60, pointer(43))
         + record(EXAMPLE, A, IN, 60, bytes(4)), False),
    Case("private type with empty rdata", header(qd=1, an=1) + QUESTION + record(pointer(12), PRIVATE_TYPE, IN, 60, b""), True),
    # Type 1 is an IPv4 address only in class IN; in CH (Chaosnet: a name and a 16-bit
    # address) the codec carries it as opaque data, and dnspython decodes it.
    Case("type 1 in class CH with Chaosnet rdata", header(qd=1, an=1) + QUESTION + record(pointer(12), A, CH, 60, b"\x00\x00\x01"),
         True),
]

# Where dnspython's rules differ from the codec's on purpose. Each case asserts both sides, so a
# change in either is noticed.
DIVERGENT = [
    # The codec caps pointer chains at 127 hops (above: 128 are rejected); dnspython at 16.
    Case("pointer chain of 17 hops", pointer_chain(17), True, False,
         "dnspython 2.9 follows at most 16 pointers (MAX_COMPRESSION_POINTER_CHAIN) and raises "
         "PointerChainTooLong; the codec allows up to 127 hops"),
    Case("pointer chain of 127 hops", pointer_chain(127), True, False,
         "dnspython: at most 16 pointers; the codec rejects only more than 127"),
    Case("TSIG record without a key", header(qd=1, ar=1) + QUESTION + record(labels(b"key"), TSIG, 255, 0, bytes(17)), True, False,
         "dnspython verifies TSIG and raises UnknownTSIGKey without a keyring; the codec carries "
         "TSIG (type 250) as opaque rdata for the resolver to judge"),
    Case("cookie option of 3 bytes", header(qd=1, ar=1) + QUESTION + opt_record(option(10, b"abc")), True, False,
         "dnspython decodes COOKIE (RFC 7873) and rejects a client cookie that is not 8 bytes; "
         "the codec carries EDNS options opaque"),
    Case("MX with 1-byte rdata", header(qd=1, an=1) + QUESTION + record(pointer(12), MX, IN, 60, b"\x00"), True, False,
         "dnspython decodes MX and runs out of rdata; the codec carries MX as opaque rdata"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=repr)
def test_hostile_message_same_verdict(case):
    ours = assert_agree(case.wire)
    assert ours["ok"] == case.sluice_accepts, f"{case.name}: {case.wire.hex()} -> {ours}"


@pytest.mark.parametrize("case", DIVERGENT, ids=repr)
def test_hostile_message_where_dnspython_differs(case):
    theirs = Decoded(case.wire)
    assert theirs.accepted == case.dnspython_accepts, f"dnspython changed: {case.because}: {theirs.view}"
    ours = sluice(case.wire)
    assert ours["ok"] == case.sluice_accepts, f"{case.name}: {case.wire.hex()} -> {ours} ({case.because})"


def test_divergent_decodings():
    """What the codec reads where dnspython refuses: checked field by field."""
    cases = {case.name: case.wire for case in DIVERGENT}
    chain = sluice(cases["pointer chain of 127 hops"])
    assert chain["answers"][1]["name"] == "a." and chain["answers"][1]["address"] == "0.0.0.0", chain
    tsig = sluice(cases["TSIG record without a key"])
    assert tsig["additional"] == [{"name": "key.", "type": TSIG, "class": 255, "ttl": 0, "rdata": "00" * 17}], tsig
    cookie = sluice(cases["cookie option of 3 bytes"])
    assert cookie["edns"]["options"] == [[10, b"abc".hex()]], cookie
    mx = sluice(cases["MX with 1-byte rdata"])
    assert mx["answers"] == [{"name": "example.com.", "type": MX, "class": IN, "ttl": 60, "rdata": "00"}], mx


TRUNCATED = GENERATED[:40]
# The message whose every prefix goes through its own process: a response with EDNS, compressed
# names and several answers, short enough to keep the test quick.
PREFIX_SOURCE = next(wire for wire in GENERATED
                     if 120 <= len(wire) <= 220 and b"\xc0" in wire[12:] and Decoded(wire).view["edns"]
                     and len(Decoded(wire).view["answers"]) >= 2)


@pytest.mark.parametrize("length", range(len(PREFIX_SOURCE)))
def test_every_truncation_is_rejected(length):
    """Every proper prefix of one generated response, one process each (UDP mode)."""
    ours = assert_agree(PREFIX_SOURCE[:length])
    assert not ours["ok"]


# --- TCP framing ---------------------------------------------------------------------------

def framed(*messages):
    return b"".join(struct.pack("!H", len(message)) + message for message in messages)


def test_tcp_several_messages_in_one_buffer():
    stream = framed(*GENERATED[:30])
    report = sluice(stream, tcp=True)
    assert report["incompleteBytes"] == 0
    assert len(report["messages"]) == 30
    for wire, ours in zip(GENERATED[:30], report["messages"]):
        assert_agree(wire, ours)


def test_tcp_every_prefix_of_many_messages_is_rejected():
    """All proper prefixes of 40 generated messages, each as one complete frame: every frame is
    a complete TCP message whose DNS content is cut short."""
    prefixes = [wire[:length] for wire in TRUNCATED for length in range(len(wire))]
    report = sluice(framed(*prefixes), tcp=True)
    assert report["incompleteBytes"] == 0
    assert len(report["messages"]) == len(prefixes)
    rejected = [m["ok"] is False for m in report["messages"]]
    accepted_prefixes = [p.hex() for p, r in zip(prefixes, rejected) if not r]
    assert not accepted_prefixes, f"accepted a truncated message: {accepted_prefixes[:3]}"


@pytest.mark.parametrize("cut", [1, 2, 3, 14, -1])
def test_tcp_message_cut_by_the_end_of_the_stream(cut):
    """A last message whose frame is incomplete is not decoded: its bytes are reported."""
    last = framed(GENERATED[2])
    partial = last[:cut] if cut > 0 else last[:cut + len(last)]
    report = sluice(framed(GENERATED[0], GENERATED[1]) + partial, tcp=True)
    assert report["incompleteBytes"] == len(partial), report
    assert [m["ok"] for m in report["messages"]] == [True, True]
    assert_agree(GENERATED[1], report["messages"][1])


def test_tcp_zero_length_frame_is_a_message_too_short_for_a_header():
    report = sluice(framed(GENERATED[0], b"", GENERATED[1]), tcp=True)
    assert report["incompleteBytes"] == 0
    assert [m["ok"] for m in report["messages"]] == [True, False, True], report
    assert_agree(GENERATED[1], report["messages"][2])


def test_tcp_bad_message_keeps_the_framing():
    hostile = [case.wire for case in HOSTILE if not case.sluice_accepts]
    report = sluice(framed(GENERATED[3], *hostile, GENERATED[4]), tcp=True)
    assert report["incompleteBytes"] == 0
    assert [m["ok"] for m in report["messages"]] == [True] + [False] * len(hostile) + [True]
    assert_agree(GENERATED[4], report["messages"][-1])


def test_tcp_empty_stream():
    assert sluice(b"", tcp=True) == {"messages": [], "incompleteBytes": 0}
