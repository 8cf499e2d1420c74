"""The thinking blocks' signatures: made by the gateway, verified when they come back."""

import pytest

from gateway.serving.dialects.anthropic_signature import (
    thinking_signature,
    thinking_signature_valid,
)


def test_it_verifies_its_own_signature():
    signature = thinking_signature("six times seven", "LongCat-Flash-Chat")
    assert thinking_signature_valid(signature, "six times seven")


@pytest.mark.parametrize(
    "forged",
    [
        "",
        None,
        "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxDYPHBzOdT1nbG",  # an Anthropic-looking one
        "gw1.bm90LWEtbW9kZWw.AAAA",
        "gw1..",
        "gw1.%%%.%%%",
        "gw2.TG9uZ0NhdA.AAAA",
    ],
)
def test_it_refuses_a_signature_it_did_not_make(forged):
    assert not thinking_signature_valid(forged, "six times seven")


def test_it_refuses_altered_text_and_a_swapped_model():
    signature = thinking_signature("six times seven", "LongCat-Flash-Chat")
    assert not thinking_signature_valid(signature, "six times eight")
    version, _model, mac = signature.split(".")
    other = thinking_signature("x", "Other-Model").split(".")[1]
    assert not thinking_signature_valid(f"{version}.{other}.{mac}", "six times seven")


def test_it_depends_on_the_secret_key(settings):
    signature = thinking_signature("thought", "m")
    settings.SECRET_KEY = "another-secret-key-for-this-test-only-0123456789"
    settings.SECRET_KEY_FALLBACKS = []
    assert not thinking_signature_valid(signature, "thought")
    assert thinking_signature("thought", "m") != signature


def test_a_previous_secret_key_in_the_fallbacks_still_verifies(settings):
    old = settings.SECRET_KEY
    signature = thinking_signature("thought", "m")
    settings.SECRET_KEY = "another-secret-key-for-this-test-only-0123456789"
    settings.SECRET_KEY_FALLBACKS = [old]
    assert thinking_signature_valid(signature, "thought")
