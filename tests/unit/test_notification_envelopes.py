"""Parsing the registry's notification envelopes and the manifests they name."""

import json

import pytest

from registry_p2p.errors import RegistryHTTPError
from registry_p2p.sidecar.notifications import (Event, check_secret, manifest_blobs, manifest_children,
                                   parse_envelope)

HEX_A = "a" * 64
HEX_B = "b" * 64
HEX_C = "c" * 64


def _envelope(*events):
    return json.dumps({"events": list(events)}).encode()


def _event(action="push", repository="team/app", digest=f"sha256:{HEX_A}",
           media_type="application/octet-stream", **extra):
    target = {"repository": repository, "digest": digest, "mediaType": media_type, **extra}
    return {"id": "event-1", "action": action, "target": target}


def test_push_and_delete_events_are_parsed():
    events = parse_envelope(_envelope(
        _event(),
        _event("delete", digest=f"sha256:{HEX_B}", media_type=None)))

    assert events == [
        Event("event-1", "push", "team/app", HEX_A, "application/octet-stream"),
        Event("event-1", "delete", "team/app", HEX_B, ""),
    ]


@pytest.mark.parametrize("event", [
    _event("pull"),
    _event("mount"),
    _event("delete", digest=None, tag="v1"),
    _event(digest="sha512:" + "a" * 128),
    _event(repository="../escape"),
    _event(repository=""),
])
def test_events_not_acted_on_are_skipped(event):
    assert parse_envelope(_envelope(event)) == []


@pytest.mark.parametrize("body", [
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'{"events": {}}',
    b'{"events": ["push"]}',
    b'{"events": [{"action": "push"}]}',
])
def test_malformed_envelope_is_400(body):
    with pytest.raises(RegistryHTTPError) as raised:
        parse_envelope(body)

    assert raised.value.status == 400


@pytest.mark.parametrize("authorization", [None, "", "Bearer wrong", "Bearer s3cret ", "s3cret",
                                           "Basic s3cret"])
def test_wrong_secret_is_401(authorization):
    with pytest.raises(RegistryHTTPError) as raised:
        check_secret(authorization, "s3cret")

    assert raised.value.status == 401


def test_right_secret_passes():
    check_secret("Bearer s3cret", "s3cret")


def test_schema2_and_oci_layers():
    manifest = {"schemaVersion": 2, "config": {"digest": f"sha256:{HEX_C}"},
                "layers": [{"digest": f"sha256:{HEX_A}"}, {"digest": f"sha256:{HEX_B}"},
                           {"digest": f"sha256:{HEX_A}"}]}

    assert manifest_blobs(manifest) == [HEX_A, HEX_B]


def test_schema1_layers():
    manifest = {"schemaVersion": 1, "fsLayers": [{"blobSum": f"sha256:{HEX_B}"},
                                                 {"blobSum": f"sha256:{HEX_A}"}]}

    assert manifest_blobs(manifest) == [HEX_B, HEX_A]


def test_index_children():
    index = {"schemaVersion": 2, "manifests": [{"digest": f"sha256:{HEX_A}"},
                                               {"digest": f"sha256:{HEX_B}"}]}

    assert manifest_children(index) == [HEX_A, HEX_B]
    assert manifest_blobs(index) == []


@pytest.mark.parametrize("manifest", [
    {"layers": "x"},
    {"layers": [1, None, {"digest": 5}, {"digest": "sha256:short"},
                {"digest": "sha256:" + "G" * 64}]},
    {"manifests": [{"digest": "md5:abc"}]},
])
def test_malformed_manifest_entries_are_ignored(manifest):
    assert manifest_blobs(manifest) == []
    assert manifest_children(manifest) == []


@pytest.mark.parametrize("body", [
    b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    json.dumps({"events": [_event(repository=5)]}).encode(),
    json.dumps({"events": [_event(repository=["a"])]}).encode(),
    json.dumps({"events": [_event(digest={"x": 1})]}).encode(),
])
def test_hostile_envelope_is_400(body):
    with pytest.raises(RegistryHTTPError) as raised:
        parse_envelope(body)

    assert raised.value.status == 400
