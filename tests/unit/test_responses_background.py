"""OpenAI Responses in background mode (`background: true`), driven by the official openai
SDK: created at once and polled to its end, its events streamed again from any
`sequence_number`, and `POST /v1/responses/{id}/cancel`, which frees the engine slot."""

from __future__ import annotations

import openai
import pytest
from utils import TARGET, ServerPreset, deferred_requests, wait_until

pytestmark = [pytest.mark.feature("responses"), pytest.mark.profile("openai")]

QUESTION = "What is the capital of France?"
OPEN = ("queued", "in_progress")  # a background response that has not ended


@pytest.fixture(autouse=True)
def _needs_responses():
    TARGET.require("responses")


@pytest.fixture
def model(chat_server):
    return chat_server.model_id()


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="dummy", max_retries=0, timeout=120)


@pytest.fixture
def client(chat_server):
    return sdk(chat_server)


def poll(client, rid: str):
    """The response once it has left queued / in_progress (polling, as OpenAI's guide does)."""
    seen = {}
    assert wait_until(lambda: seen.setdefault("r", client.responses.retrieve(rid)).status not in OPEN
                      or seen.pop("r") is None, 120), "the background response never ended"
    return seen["r"]


def test_background_polls_to_completion(client, model):
    kwargs = {"model": model, "input": QUESTION, "max_output_tokens": 24, "temperature": 0}
    res = client.responses.create(background=True, **kwargs)
    assert res.background is True and res.status in OPEN and res.output == []
    done = poll(client, res.id)
    assert done.id == res.id and done.status in ("completed", "incomplete") and done.background
    assert done.output_text == client.responses.create(**kwargs).output_text
    assert done.usage.output_tokens > 0


def test_background_needs_store(client, model):
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=model, input=QUESTION, background=True, store=False)


def test_cancel_errors(client, model):
    """Only background responses can be cancelled: an error for any other (OpenAI documents no
    status: 400 or 404), 404 for an unknown id."""
    res = client.responses.create(model=model, input=QUESTION, max_output_tokens=2)
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)):
        client.responses.cancel(res.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_nope")


def test_background_stream_resumes(client, model):
    """A `background` + `stream` response's events come again from GET ?stream=true,
    after any `starting_after`, equal to the first stream's."""
    kwargs = {"model": model, "input": QUESTION, "max_output_tokens": 16, "temperature": 0}
    first = list(client.responses.create(background=True, stream=True, **kwargs))
    assert [e.sequence_number for e in first] == list(range(len(first)))
    assert first[0].type == "response.created" and first[-1].type in ("response.completed", "response.incomplete")
    rid = first[0].response.id
    cut = len(first) // 2
    again = list(client.responses.retrieve(rid, stream=True, starting_after=cut))
    assert [e.model_dump() for e in again] == [e.model_dump() for e in first[cut + 1:]]
    with client.responses.stream(response_id=rid) as stream:  # the SDK's helper, from the start
        final = stream.get_final_response()
    assert final.output_text == first[-1].response.output_text
    assert final.output_text == client.responses.create(**kwargs).output_text


# ------------------------------------------------------------------ cancelling running ones
@pytest.fixture(scope="module")
def long_server(server_pool):
    """One slot, endless requests (no -n, context shift): a request runs until cancelled."""
    def make():
        server = ServerPreset.one_slot()
        server.n_ctx, server.n_predict, server.context_shift, server.server_metrics = 2048, -1, True, True
        return server
    return server_pool("long", make)


ENDLESS = {"input": "Tell me a story.", "background": True, "extra_body": {"ignore_eos": True}}


@pytest.mark.needs_flags
@pytest.mark.profile("refserver")  # an endless generation (ignore_eos) and /slots are llama.cpp's
def test_cancel_running_frees_slot(long_server):
    client = sdk(long_server)
    res = client.responses.create(model=long_server.model_id(), **ENDLESS)
    assert wait_until(lambda: client.responses.retrieve(res.id).status == "in_progress", 60)
    # a few tokens generated: the first (sent at once) is in the response when it is cancelled
    assert wait_until(lambda: long_server.slots()[0]["next_token"][0]["n_decoded"] >= 8, 60)
    cancelled = client.responses.cancel(res.id)
    assert cancelled.id == res.id and cancelled.status == "cancelled"
    assert long_server.wait_slots_idle(1.0), "slot still busy 1 s after the cancel"
    again = client.responses.cancel(res.id)  # idempotent: the same cancelled response
    assert again.status == "cancelled" and again.output_text == cancelled.output_text
    got = client.responses.retrieve(res.id)
    assert got.status == "cancelled" and got.output and all(item.status == "incomplete" for item in got.output)


@pytest.mark.needs_flags
@pytest.mark.profile("refserver")
def test_cancel_queued(long_server):
    """A background response waiting for the busy slot is "queued" until cancelled, and
    then never runs."""
    client = sdk(long_server)
    holder = long_server.hold_slot()
    try:
        res = client.responses.create(model=long_server.model_id(), **ENDLESS)
        assert wait_until(lambda: deferred_requests(long_server) >= 1, 30), "the response was never queued"
        assert client.responses.retrieve(res.id).status == "queued"
        with pytest.raises(openai.BadRequestError):  # nothing to continue yet
            client.responses.create(model=long_server.model_id(), input="And then?", previous_response_id=res.id)
        assert client.responses.cancel(res.id).status == "cancelled"
        assert wait_until(lambda: deferred_requests(long_server) == 0, 5), "the cancelled response is still queued"
        assert client.responses.retrieve(res.id).output == []
    finally:
        holder.close()
    assert long_server.wait_slots_idle(2.0)


@pytest.mark.needs_flags
@pytest.mark.profile("refserver")  # OpenAI documents no answer for this; refserver's is a 400
def test_cancel_ended_is_400(long_server):
    client = sdk(long_server)
    res = client.responses.create(model=long_server.model_id(), input=QUESTION, background=True,
                                  max_output_tokens=2)
    assert poll(client, res.id).status in ("completed", "incomplete")
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.cancel(res.id)
    assert "Cannot cancel" in err.value.body["message"]


@pytest.mark.needs_flags
@pytest.mark.profile("refserver")
def test_leaving_a_background_stream_cancels_nothing(long_server):
    client = sdk(long_server)
    stream = client.responses.create(model=long_server.model_id(), stream=True, **ENDLESS)
    events = iter(stream)
    rid = next(events).response.id
    last = next(e for e in events if e.type == "response.output_text.delta").sequence_number
    stream.close()
    try:
        resumed = client.responses.retrieve(rid, stream=True, starting_after=last)
        later = next(e for e in resumed if e.type == "response.output_text.delta")  # the run went on
        resumed.close()
        assert later.sequence_number > last
        assert client.responses.retrieve(rid).status == "in_progress"
    finally:
        client.responses.cancel(rid)
    assert long_server.wait_slots_idle(1.0)


@pytest.mark.needs_flags
@pytest.mark.profile("refserver")  # --responses-store-size is refserver's
def test_store_keeps_running_background_responses(server_pool):
    """With room for one response, a running background response is not evicted by the
    next one (it could no longer be polled or cancelled); once it ends, it goes."""
    def make():
        server = ServerPreset.one_slot()
        server.n_ctx, server.n_predict, server.context_shift = 2048, -1, True
        server.responses_store_size = 1
        return server

    server = server_pool("store1-long", make)
    client = sdk(server)
    running = client.responses.create(model=server.model_id(), **ENDLESS)
    assert wait_until(lambda: client.responses.retrieve(running.id).status == "in_progress", 60)
    client.responses.cancel(running.id)
    other = client.responses.create(model=server.model_id(), input="Hi", max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):  # ended, so evicted as usual
        client.responses.retrieve(running.id)
    running = client.responses.create(model=server.model_id(), **ENDLESS)
    assert wait_until(lambda: client.responses.retrieve(running.id).status == "in_progress", 60)
    queued = client.responses.create(model=server.model_id(), input="Hi", max_output_tokens=2, background=True)
    assert client.responses.retrieve(running.id).status == "in_progress"  # both kept while they run
    assert client.responses.retrieve(queued.id).status == "queued"
    assert client.responses.cancel(running.id).status == "cancelled"
    assert poll(client, queued.id).status in ("completed", "incomplete")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(other.id)


@pytest.mark.needs_flags
@pytest.mark.profile("refserver")
def test_background_without_a_store_is_400(server_pool):
    def make():
        server = ServerPreset.chat()
        server.responses_store_size = 0
        return server

    server = server_pool("store0", make)
    res = server.post("/v1/responses", {"input": "Hi", "background": True})
    assert res.status_code == 400 and "--responses-store-size 0" in res.body["error"]["message"]
