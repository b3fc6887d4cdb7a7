"""Community ID v1: the reference implementation's published vectors, both directions, flow keys."""
from __future__ import annotations

import random

import pytest

from trafficsnn.flows.community_id import community_id, community_ids, flow_community_id, key_community_id
from trafficsnn.flows.records import FlowKey
from trafficsnn.packets.batch import ip_to_words

# (proto, saddr, daddr, sport, dport, base64 seed 0, hex seed 0, base64 seed 1): the vectors of
# corelight/pycommunityid tests/communityid_test.py (the spec's reference implementation)
VECTORS = [
    (1, "192.168.0.89", "192.168.0.1", 8, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=",
     "1:5f4b27617a60c22bfd4d9b6a83ae2c833527e839", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "192.168.0.1", "192.168.0.89", 0, 8, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=",
     "1:5f4b27617a60c22bfd4d9b6a83ae2c833527e839", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "192.168.0.89", "192.168.0.1", 20, 0, "1:3o2RFccXzUgjl7zDpqmY7yJi8rI=",
     "1:de8d9115c717cd482397bcc3a6a998ef2262f2b2", "1:lCXHHxavE1Vq3oX9NH5ladQg02o="),
    (1, "192.168.0.89", "192.168.0.1", 20, 1, "1:tz/fHIDUHs19NkixVVoOZywde+I=",
     "1:b73fdf1c80d41ecd7d3648b1555a0e672c1d7be2", "1:Ie3wmFyxiEyikbsbcO03d2nh+PM="),
    (1, "192.168.0.1", "192.168.0.89", 0, 20, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=",
     "1:5f4b27617a60c22bfd4d9b6a83ae2c833527e839", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 0, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
     "1:7461f21af8cc7e58e0e81a69c26ddb8342cef136", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 0, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
     "1:7461f21af8cc7e58e0e81a69c26ddb8342cef136", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "3ffe:507:0:1:260:97ff:fe07:69ea", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0,
     "1:NdobDX8PQNJbAyfkWxhtL2Pqp5w=", "1:35da1b0d7f0f40d25b0327e45b186d2f63eaa79c",
     "1:OlOWx9psIbBFi7lOCw/4MhlKR9M="),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:507:0:1:260:97ff:fe07:69ea", 3, 0,
     "1:/OGBt9BN1ofenrmSPWYicpij2Vc=", "1:fce181b7d04dd687de9eb9923d66227298a3d957",
     "1:Ij4ZxnC87/MXzhOjvH2vHu7LRmE="),
    (132, "192.168.170.8", "192.168.170.56", 7, 80, "1:jQgCxbku+pNGw8WPbEc/TS/uTpQ=",
     "1:8d0802c5b92efa9346c3c58f6c473f4d2fee4e94", "1:Y1/0jQg6e+I3ZwZZ9LP65DNbTXU="),
    (132, "192.168.170.56", "192.168.170.8", 80, 7, "1:jQgCxbku+pNGw8WPbEc/TS/uTpQ=",
     "1:8d0802c5b92efa9346c3c58f6c473f4d2fee4e94", "1:Y1/0jQg6e+I3ZwZZ9LP65DNbTXU="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80, "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
     "1:2d053da9994af81e45dca0e67afea6e4f3226eb8", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855, "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
     "1:2d053da9994af81e45dca0e67afea6e4f3226eb8", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (6, "10.0.0.1", "10.0.0.2", 10, 11569, "1:SXBGMX1lBOwhhoDrZynfROxnhnM=",
     "1:497046317d6504ec218680eb6729df44ec678673", "1:HmBRGR+fUyXF4t8WEtal7Y0gEAo="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53, "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
     "1:77f14fe445b7c22635bc29dd87095e451287a304", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585, "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
     "1:77f14fe445b7c22635bc29dd87095e451287a304", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (46, "10.1.24.4", "10.1.12.1", None, None, "1:/nQI4Rh/TtY3mf0R2gJFBkVlgS4=",
     "1:fe7408e1187f4ed63799fd11da0245064565812e", "1:BK3BVW3U2eemuwVQVN3zd/GULno="),
    (46, "10.1.12.1", "10.1.24.4", None, None, "1:/nQI4Rh/TtY3mf0R2gJFBkVlgS4=",
     "1:fe7408e1187f4ed63799fd11da0245064565812e", "1:BK3BVW3U2eemuwVQVN3zd/GULno="),
]


@pytest.mark.parametrize("v", VECTORS, ids=[f"{v[0]}-{v[1]}-{v[3]}" for v in VECTORS])
def test_published_vectors(v):
    proto, sa, da, sp, dp, b64, hx, seeded = v
    assert community_id(proto, sa, da, sp, dp) == b64
    assert community_id(proto, sa, da, sp, dp, base64_output=False) == hx
    assert community_id(proto, sa, da, sp, dp, seed=1) == seeded
    import ipaddress
    assert community_id(proto, ipaddress.ip_address(sa).packed, ipaddress.ip_address(da).packed, sp, dp) == b64


def _key(proto, a, b, pa, pb):
    return FlowKey(0, proto, *ip_to_words(a), pa, *ip_to_words(b), pb)


def test_flow_key_matches_tuple_and_both_directions():
    for proto, sa, da, sp, dp, b64, *_ in VECTORS:
        if proto in (6, 17):
            assert flow_community_id(_key(proto, sa, da, sp, dp)) == b64
            assert flow_community_id(_key(proto, da, sa, dp, sp)) == b64
        if proto == 46:
            assert flow_community_id(_key(proto, sa, da, 0, 0)) == b64
    # no type/code in the key: no (wrong) ID for ICMP, ICMPv6, SCTP
    assert flow_community_id(_key(1, "10.0.0.1", "10.0.0.2", 0, 0)) is None
    assert flow_community_id(_key(58, "fe80::1", "fe80::2", 0, 0)) is None
    # a key mixing an IPv6 and an IPv4(-mapped) address still gets an ID, never an exception
    assert flow_community_id(_key(17, "2001:db8::1", "8.8.8.8", 1, 2)).startswith("1:")
    assert flow_community_id(_key(132, "10.0.0.1", "10.0.0.2", 7, 80)) is None


def test_equal_addresses_order_by_port_and_ipv4_mapped_text():
    a = community_id(6, "10.0.0.1", "10.0.0.1", 5000, 80)
    assert a == community_id(6, "10.0.0.1", "10.0.0.1", 80, 5000)
    assert a != community_id(6, "10.0.0.1", "10.0.0.1", 80, 5001)
    assert community_id(6, "::ffff:10.0.0.1", "10.0.0.2", 1, 2) == community_id(6, "10.0.0.1", "10.0.0.2", 1, 2)


def test_columns_and_bad_input():
    import numpy as np
    keys = [_key(17, "192.168.1.52", "8.8.8.8", 54585, 53), _key(1, "1.1.1.1", "2.2.2.2", 0, 0)]
    cols = {f: np.array([getattr(k, f) for k in keys], dtype=np.uint64) for f in
            ("proto", "client_hi", "client_lo", "client_port", "server_hi", "server_lo", "server_port")}
    assert community_ids(cols) == ["1:d/FP5EW3wiY1vCndhwleRRKHowQ=", None]
    with pytest.raises(ValueError):
        community_id(6, "1.2.3.4", "5.6.7.8")            # TCP needs ports
    with pytest.raises(ValueError):
        community_id(6, "1.2.3.4", "::1", 1, 2)          # mixed versions
    with pytest.raises(ValueError):
        community_id(6, "1.2.3.4", "5.6.7.8", 1, 2, seed=1 << 16)
    with pytest.raises(ValueError):
        community_id(6, "1.2.3.4", "5.6.7.8", 70000, 2)


def test_agrees_with_the_communityid_package_on_random_flows():
    cid = pytest.importorskip("communityid")
    rng = random.Random(7)
    calc = cid.CommunityID()
    for _ in range(300):
        v6 = rng.random() < 0.3
        if v6:
            a, b = (str(__import__("ipaddress").IPv6Address(rng.getrandbits(128))) for _ in range(2))
        else:
            a, b = (str(__import__("ipaddress").IPv4Address(rng.getrandbits(32))) for _ in range(2))
        if rng.random() < 0.1:
            b = a
        proto = rng.choice([6, 17])
        sp, dp = rng.randrange(65536), rng.randrange(65536)
        ref = calc.calc(cid.FlowTuple(proto, a, b, sp, dp))
        assert community_id(proto, a, b, sp, dp) == ref
        assert key_community_id(proto, *ip_to_words(a), sp, *ip_to_words(b), dp) == ref


def test_verdicts_carry_the_community_id_in_both_json_paths():
    import json

    from trafficsnn.serve.sinks import Verdict

    for key, want in ((_key(17, "192.168.1.52", "8.8.8.8", 54585, 53), "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
                      (_key(1, "10.0.0.1", "10.0.0.2", 0, 0), None)):
        v = Verdict(key=key, flow_id=1, sensor="s", label="VoIP", confidence=0.9, probabilities={"VoIP": 0.9},
                    packets=3, first_ts=1.0, verdict_ts=2.0, model_id="m", model_sha256="0" * 64)
        assert v.to_dict()["community_id"] == want
        assert json.loads(v.to_json()) == v.to_dict()
