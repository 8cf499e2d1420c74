"""An upstream key stored under a KEY_ENCRYPTION_KEY that is gone: the gateway says so once in
its log and answers that model's calls with a clear 503, not a 500 with a traceback each."""

import logging

from cryptography.fernet import Fernet

from gateway.services import model_set_upstream_key

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()


def test_it_answers_503_and_logs_once_for_an_upstream_key_it_cannot_decrypt(
    gw, alice_key, demo_model, settings, caplog
):
    settings.KEY_ENCRYPTION_KEY = OLD
    model_set_upstream_key(model=demo_model, raw_key="sk-upstream-secret")
    settings.KEY_ENCRYPTION_KEY = NEW
    # The harness's catalog has no snapshot life: every request reloads it.
    caplog.set_level(logging.ERROR, logger="gateway")
    results = []
    for _ in range(3):
        results.append(gw.chat(alice_key[1]))
    assert [r.status for r in results] == [503, 503, 503]
    assert results[0].json()["error"]["code"] == "model_unavailable"
    lines = [r for r in caplog.records if "cannot be decrypted" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert not any(r.exc_info for r in caplog.records)
    # With the old key listed the model serves again, without a restart.
    settings.KEY_ENCRYPTION_OLD_KEYS = [OLD]
    assert gw.chat(alice_key[1]).status == 200
