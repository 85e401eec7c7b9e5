"""Calls — create, get, list, end, recording — and numbers/buy through the official SDK, against
the server's built-in sandbox carrier."""

import time
import uuid

import pytest
from vocode import CreateCallAgentParams, PromptParams
from vocode.core.api_error import ApiError
from vocode.errors.unprocessable_entity_error import UnprocessableEntityError


def wait_until_over(client, call_id, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        call = client.calls.get_call(id=call_id)
        if call.status in ("ended", "error"):
            return call
        time.sleep(0.05)
    raise AssertionError(f"call {call_id} did not end within {limit} s")


@pytest.fixture(scope="module")
def our_number(client):
    return client.numbers.buy_number(telephony_provider="twilio", area_code="415").number


def test_buy_number(client):
    twilio = client.numbers.buy_number(telephony_provider="twilio", area_code="212", inbound_agent="default")
    assert twilio.telephony_provider == "twilio" and twilio.number.startswith("1212") and twilio.active
    assert twilio.inbound_agent is not None
    vonage = client.numbers.buy_number()
    assert vonage.telephony_provider == "vonage", "the spec's default provider"
    assert client.numbers.get_number(phone_number=vonage.number).id == vonage.id
    with pytest.raises(UnprocessableEntityError):
        client.numbers.buy_number(area_code="12")


def test_a_call_from_start_to_end(client, other, our_number):
    call = client.calls.create_call(
        from_number=our_number,
        to_number="+1 (415) 555-0199",
        agent=CreateCallAgentParams(prompt=PromptParams(content="Ask Ajay if his refrigerator is running")),
        context={"name": "Ajay"},
    )
    assert call.status == "in_progress" and call.stage == "created"
    assert call.to_number == "14155550199" and call.agent.prompt.content.startswith("Ask Ajay")
    assert call.telephony_id and call.telephony_metadata.type == "telephony_metadata_twilio"
    ended = wait_until_over(client, call.id)
    assert (ended.status, ended.stage, ended.stage_outcome) == ("ended", "picked_up", "human_disconnected")
    assert ended.start_time and ended.end_time and ended.recording_available
    listed = {c.id: c for c in client.calls.list_calls(size=100, sort_column="created_at", sort_desc=True).items}
    assert listed[call.id].agent == call.agent.id, "NormalizedCall carries the agent's id"
    assert isinstance(listed[call.id].start_time, float)
    audio = b"".join(client.calls.get_recording(id=call.id))
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE", "a WAV recording of both sides"
    with pytest.raises(ApiError) as err:
        other.calls.get_call(id=call.id)
    assert err.value.status_code == 404
    assert call.id not in [c.id for c in other.calls.list_calls(size=100).items]


def test_ending_a_call(client, our_number):
    call = client.calls.create_call(from_number=our_number, to_number="14155550105", agent=CreateCallAgentParams(prompt=PromptParams()))
    deadline = time.monotonic() + 10
    while client.calls.get_call(id=call.id).stage != "picked_up":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ended = client.calls.end_call(id=call.id)
    assert (ended.status, ended.stage_outcome) == ("ended", "bot_disconnected")
    again = client.calls.end_call(id=call.id)
    # Ending twice changes nothing (the recording may still arrive from the carrier meanwhile).
    assert (again.status, again.stage, again.stage_outcome, again.end_time) == (
        ended.status,
        ended.stage,
        ended.stage_outcome,
        ended.end_time,
    )


def test_scenarios_and_refusals(client, our_number):
    machine = client.calls.create_call(
        from_number=our_number, to_number="14155550101", agent=CreateCallAgentParams(prompt=PromptParams()), on_no_human_answer="hangup"
    )
    busy = client.calls.create_call(from_number=our_number, to_number="14155550102", agent=CreateCallAgentParams(prompt=PromptParams()))
    refused = client.calls.create_call(from_number=our_number, to_number="14155550106", agent=CreateCallAgentParams(prompt=PromptParams()))
    assert refused.status == "error" and "21211" in refused.error_message
    m = wait_until_over(client, machine.id)
    assert (m.stage_outcome, m.human_detection_result) == ("human_unanswered", "no_human")
    assert wait_until_over(client, busy.id).stage_outcome == "human_unanswered"
    with pytest.raises(ApiError) as err:
        b"".join(client.calls.get_recording(id=refused.id))
    assert err.value.status_code == 404


def test_bad_calls_raise(client, our_number):
    agent = CreateCallAgentParams(prompt=PromptParams())
    with pytest.raises(UnprocessableEntityError):
        client.calls.create_call(from_number=our_number, to_number="call me maybe", agent=agent)
    with pytest.raises(UnprocessableEntityError):
        client.calls.create_call(from_number="14155550000", to_number="14155550199", agent=agent)
    with pytest.raises(UnprocessableEntityError):
        client.calls.create_call(from_number=our_number, to_number="14155550199", agent=str(uuid.uuid4()))
    with pytest.raises(UnprocessableEntityError):
        client.calls.get_call(id="not-a-uuid")


def test_idempotency_key(client, our_number):
    key = {"additional_headers": {"Idempotency-Key": "sdk-" + uuid.uuid4().hex}}
    agent = CreateCallAgentParams(prompt=PromptParams(content="once"))
    first = client.calls.create_call(from_number=our_number, to_number="14155550105", agent=agent, request_options=key)
    again = client.calls.create_call(from_number=our_number, to_number="14155550105", agent=agent, request_options=key)
    assert first.id == again.id
    with pytest.raises(UnprocessableEntityError):
        client.calls.create_call(from_number=our_number, to_number="14155550106", agent=agent, request_options=key)
    client.calls.end_call(id=first.id)
