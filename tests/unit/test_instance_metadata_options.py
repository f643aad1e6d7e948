"""controller/services/instance_metadata.py's pure rules: options merged over the defaults,
region and private DNS names, the signing key kept in the state dir."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from controller.models import InstanceMetadataOptions
from controller.services import instance_metadata as im


def test_defaults_are_imdsv2_required():
    assert im.resolve_options(None) == {"http_tokens": "required", "http_endpoint": "enabled",
                                        "http_put_response_hop_limit": 1,
                                        "instance_metadata_tags": "disabled"}


def test_requested_over_current_over_defaults():
    cur = {"http_tokens": "optional", "http_put_response_hop_limit": 4}
    got = im.resolve_options(InstanceMetadataOptions(http_endpoint="disabled"), cur)
    assert got == {"http_tokens": "optional", "http_endpoint": "disabled",
                   "http_put_response_hop_limit": 4, "instance_metadata_tags": "disabled"}
    # A stored dict edited by hand never reaches an agent.
    with pytest.raises(ValidationError):
        im.resolve_options(None, {"http_put_response_hop_limit": 0})


@pytest.mark.parametrize("body", [{"http_tokens": "maybe"}, {"http_endpoint": "on"},
                                  {"http_put_response_hop_limit": 0},
                                  {"http_put_response_hop_limit": 65}, {"ipv6": "enabled"}])
def test_bad_option_values_are_refused(body):
    with pytest.raises(ValidationError):
        InstanceMetadataOptions.model_validate(body)


def test_region_and_dns_names():
    assert im.region_of("kumo-1a") == "kumo-1"
    assert im.region_of("us-east-1b") == "us-east-1"
    assert im.private_dns("10.0.1.5", "kumo-1") == "ip-10-0-1-5.kumo-1.compute.internal"


def test_signing_key_generated_once_and_private(tmp_path):
    s1 = im.signer(tmp_path)
    key = tmp_path / im.KEY_FILE
    assert key.stat().st_mode & 0o077 == 0
    assert (tmp_path / im.CERT_FILE).read_bytes() == s1.certificate_pem
    im._signers.clear()  # a restarted controller loads the same key
    s2 = im.signer(tmp_path)
    assert s2.certificate_pem == s1.certificate_pem
    assert s2.signature(b"x") == s1.signature(b"x")
