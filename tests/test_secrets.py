"""Secrets never leak: not into DEBUG logs of the HTTP stack (HTTP/2 and HTTP/1.1 over real loopback), not through a
key the config rejects, not through an error body that echoes the key without its ``tml-`` prefix."""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import importlib
import logging
import traceback

import hpack
import httpx
import pytest
import trio
import trio.testing
from _simkit import BASE_URL, Reply, sim_config, sim_stack

from tinkex_trio import _secrets
from tinkex_trio import types as t
from tinkex_trio._config import Config, validate_api_key
from tinkex_trio._session import open_session
from tinkex_trio.errors import (
    APIStatusError,
    BadRequestError,
    ConfigError,
    PermissionDeniedError,
    ResponseValidationError,
    redact,
)
from tinkex_trio.sim import open_sim_server
from tinkex_trio.sim._config import ServiceTime

SUFFIX = "SECRETk3y-5uffix-0123456789abcdefXYZ"
KEY = "tml-" + SUFFIX
BASE = "Qwen/Qwen3-8B"
PROMPT = t.ModelInput.from_ints([1, 2, 3, 4, 5, 6, 7, 8])
TOKENS = [1, 2, 3, 4, 5, 6, 7, 8]
NON_ASCII_KEY = "tml-SECRETkéy-0123456789"  # a name, not a literal, at the call: tracebacks show the source line


def leaks(text: str) -> bool:
    return SUFFIX in text or SUFFIX.encode().hex() in text


def exception_texts(exc: BaseException) -> list[str]:
    """Everything a user may print of an exception: str, repr, args, the formatted traceback, its chain."""
    texts: list[str] = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return texts


# -- logs -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("http2", [True, False], ids=["http2", "http1.1"])
async def test_debug_logs_of_a_real_session_never_show_the_key(http2: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Root at DEBUG, every logger captured: a session, a training step and a sample over TLS on 127.0.0.1."""
    sim_cfg = sim_config(service=ServiceTime(base_s=0.01))
    sim_cfg.compute_in_threads = True
    caplog.set_level(logging.DEBUG)  # the root logger and the capture handler
    for name in ("httpx", "httpcore", "hpack", "h2", "tinkex_trio"):
        # Explicitly too: an imported library may have raised one of them (the official SDK quiets "httpx").
        caplog.set_level(logging.DEBUG, logger=name)
    with trio.fail_after(60):
        async with open_sim_server(sim_cfg, tls=True, http2=http2) as server:
            config = Config.create(KEY, server.base_url, http2=http2, telemetry=False)
            async with open_session(config=config, ssl_context=server.client_ssl_context()) as session:
                trainer = await session.create_lora_training_client(BASE, rank=2)
                datum = t.datum(TOKENS[:-1], target_tokens=TOKENS[1:], weights=[1.0] * (len(TOKENS) - 1))
                await trainer.forward_backward([datum], "cross_entropy")
                await trainer.optim_step(t.AdamParams(learning_rate=0.01))
                sampler = await session.create_sampling_client(base_model=BASE)
                result = await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=2))
                assert result.sequences
            versions = set(server.stats.http_versions)
    assert versions == ({"2"} if http2 else {"1.1"})
    names = {r.name for r in caplog.records}
    # The run really logged at DEBUG through the stack whose logs could carry the header. Over HTTP/1.1 the requests
    # go through tinkex_trio._h11 (h11 over trio sockets), which logs nothing; the session still logs.
    if http2:
        assert "httpcore.connection" in names and "httpx" in names
    else:
        assert not any(n.startswith(("httpcore", "httpx", "h11")) for n in names) and "tinkex_trio.session" in names
    if http2:
        # hpack logs every header it encodes (client) and decodes (server), values included.
        assert {"hpack.hpack", "httpcore.http2"} <= names
        assert any("x-api-key" in r.getMessage() for r in caplog.records if r.name == "hpack.hpack")
    # hpack also logs whole header blocks as bytes: there the key is Huffman-coded, which anyone can decode.
    huffman = [s for s in _secrets._bytes_spellings(_secrets._hpack_huffman(KEY.encode())) if s]
    if http2:
        assert any(r.getMessage().startswith("Encoded header block to") for r in caplog.records)
    for record in caplog.records:
        texts = [record.getMessage(), str(record.msg), repr(record.args), record.exc_text or ""]
        assert not any(leaks(text) for text in texts), (record.name, record.getMessage()[:300])
        assert not any(h in text for h in huffman for text in texts), (record.name, record.getMessage()[:300])
    assert not leaks(caplog.text)
    # The key is sent as the X-API-Key header of an HTTP/2 request, but not as an HPACK never-indexed field: httpcore
    # rebuilds every header as a plain 2-tuple before h2 encodes it, and offers no public way to mark one sensitive
    # (see tinkex_trio._secrets). So there is no never-indexed assertion here.


def test_every_logger_of_the_stack_is_filtered() -> None:
    """Guards the explicit list: a logger filter is not inherited by child loggers, so every logger that exists
    under the stack's prefixes (once everything is imported) must have the filter itself."""
    for module in ("h2.connection", "hpack", "httpcore", "httpx", "tinkex_trio.cli", "tinkex_trio.sim"):
        importlib.import_module(module)
    _secrets.install_log_filters()
    prefixes = ("hpack", "h2", "httpcore", "httpx", "tinkex_trio")
    existing = [
        name
        for name, log in logging.Logger.manager.loggerDict.items()
        if isinstance(log, logging.Logger) and name.split(".")[0] in prefixes
    ]
    assert "hpack.hpack" in existing and "tinkex_trio.transport" in existing

    def filtered(name: str) -> bool:
        return any(isinstance(f, _secrets.ScrubFilter) for f in logging.getLogger(name).filters)

    missing = [name for name in existing if not filtered(name)]
    assert not missing


def test_the_filter_scrubs_message_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    validate_api_key(KEY)
    _secrets.install_log_filters()
    log = logging.getLogger("hpack.hpack")
    caplog.set_level(logging.DEBUG)
    log.debug("Adding %s=%s to the header table", b"x-api-key", KEY.encode())
    log.debug("echo %r", {"detail": SUFFIX})
    log.debug("short %.4s", SUFFIX)  # the formatted message hides it, the args do not
    try:
        raise ValueError(f"bad {SUFFIX}")
    except ValueError:
        log.debug("failed", exc_info=True)
    log.debug("bad format %d", SUFFIX)  # formatting fails: logging would print the args in its error report
    records = [r for r in caplog.records if r.name == "hpack.hpack"]
    assert len(records) == 5
    for record in records:
        assert not leaks(record.getMessage()) and not leaks(repr(record.args)) and not leaks(record.exc_text or "")
    assert "<redacted>" in records[0].getMessage() and "x-api-key" in records[0].getMessage()
    assert records[2].getMessage() == "short SECR"
    assert not leaks(caplog.text)


# -- the config -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "tml-SECRETkéy-0123456789",  # non-ASCII, printable
        "tml-SECRETkey-\u00a0-0123456789",  # non-ASCII whitespace
        "tml-SECRETkey-0123456789\r\nX-Evil: 1",  # header injection
        "tml-SECRETkey-\x00-0123456789",  # control character
        "tml-SECRETkey-\u200b-0123456789",  # zero-width space (a format character)
    ],
    ids=["non-ascii", "nbsp", "crlf", "nul", "zero-width"],
)
def test_a_key_that_is_not_printable_ascii_is_refused_without_echoing_it(bad: str) -> None:
    for build in (
        lambda: validate_api_key(bad),
        lambda: Config.create(bad, BASE_URL),
        lambda: Config.create(env={"TINKER_API_KEY": bad}),
        lambda: Config(api_key=bad),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.key == "api_key" and str(info.value).startswith("api_key: ")
        for text in exception_texts(info.value):
            assert "SECRETk" not in text and bad not in text, text


async def test_a_non_ascii_key_fails_before_any_request() -> None:
    async with sim_stack(sim_config()) as sim:
        with pytest.raises(ConfigError) as info:
            async with open_session(NON_ASCII_KEY, BASE_URL, transport_factory=sim.transport_factory):
                pass  # pragma: no cover
        assert sim.rec.seen == []
        assert not any("SECRETk" in text for text in exception_texts(info.value))


# -- error bodies -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        (Reply(400, {"detail": f"invalid api key {SUFFIX}", "echo": [SUFFIX, {SUFFIX: KEY}]}), BadRequestError),
        (Reply(403, f"key {SUFFIX} is not allowed; full: {KEY}".encode(), "text/plain"), PermissionDeniedError),
        (Reply(200, f'{{"supported_models": "{SUFFIX}'.encode()), ResponseValidationError),
    ],
    ids=["json-400", "text-403", "bad-json-200"],
)
async def test_an_error_body_echoing_the_bare_key_is_redacted(
    reply: Reply, error_class: type[Exception], autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        sim_stack(sim_config()) as sim,
        open_session(KEY, BASE_URL, transport_factory=sim.transport_factory) as session,
    ):
        sim.rec.script("get_server_capabilities", reply)
        with pytest.raises(error_class) as info:
            await session.get_server_capabilities()
        assert sim.rec.scripted_left("get_server_capabilities") == 0
    exc = info.value
    for text in exception_texts(exc):
        assert not leaks(text), text
    body: object = getattr(exc, "body", None)
    assert body is not None and not leaks(repr(body))
    assert "<redacted>" in repr(body)
    if isinstance(exc, APIStatusError):
        assert not leaks(repr(exc.headers))


# -- redact -----------------------------------------------------------------------------------------------------------


def test_redact_covers_registered_keys_with_and_without_prefix() -> None:
    other = "tml-Another0therKeyValue42"
    bare = other.removeprefix("tml-")
    assert redact(f"x {bare} y") == f"x {bare} y"  # not registered yet: only the tml- form is a pattern
    _secrets.register_secret(other)
    assert redact(f"x {bare} y") == "x <redacted> y"
    assert redact(f"x {other} y") == "x <redacted> y"  # the whole key, not 'tml-' + <redacted>
    assert redact(f"x={bare!r}") == "x='<redacted>'"
    assert redact(repr(bare.encode())) == "b'<redacted>'"
    assert _secrets.scrub_bytes(b"k=" + bare.encode()) == b"k=<redacted>"
    # A JWT and an unregistered tml- key are still redacted by shape.
    assert redact("tml-neverseen eyJa.eyJb.c") == "<redacted> <redacted>"


def test_a_short_suffix_is_not_redacted_everywhere() -> None:
    _secrets.register_secret("tml-abc")
    assert redact("abc tml-abc") == "abc <redacted>"


def test_register_is_idempotent_and_keeps_only_the_key_spellings() -> None:
    key = "tml-Idem\\potent'Key\"0123"
    _secrets.register_secret(key)
    before = set(_secrets._secrets)
    _secrets.register_secret(key)
    assert _secrets._secrets == before
    for text in (key, repr(key), repr(key.encode()), str(httpx.Headers({"k": key}))):
        assert "Idem" not in redact(text), text


def test_the_huffman_spelling_is_the_key_as_hpack_codes_it() -> None:
    """An independent check of _hpack_huffman: hpack's public Decoder reads the code back as the key."""
    for key in (KEY, "tml-" + "x" * 300):  # one length byte, and a multi-byte length (>= 127)
        _secrets.register_secret(key)
        code = _secrets._hpack_huffman(key.encode())
        assert code and len(code) < len(key)
        length = len(code)
        prefix = bytes([0x80 | length]) if length < 127 else bytes([0xFF, *_rest_of_int(length - 127)])
        block = b"\x00\x01k" + prefix + code  # a literal, not indexed, with a literal (non-Huffman) name
        assert hpack.Decoder().decode(block, raw=True) == [(b"k", key.encode())]
        spelling = _secrets._bytes_spellings(code)
        assert any(s in repr(b"\x88" + code + b"\x00") for s in spelling)
        assert redact(repr(b"\x88" + code)).count("<redacted>") == 1


def _rest_of_int(value: int) -> list[int]:
    out: list[int] = []
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return [*out, value]
