"""Agents, numbers and usage — their ten operations — through the official SDK, including the
id-or-inline forms and the 422 cases."""

import uuid

import pytest
from vocode import (
    AgentUpdateParams,
    AzureVoiceParams,
    PromptParams,
    PromptUpdateParams,
    TransferCallActionUpdateParams,
    TwilioAccountConnectionParams,
    TwilioCredentials,
    WebhookParams,
    WebhookUpdateParams,
)
from vocode.core.api_error import ApiError
from vocode.errors.unprocessable_entity_error import UnprocessableEntityError


def unique_number():
    return "1415" + str(uuid.uuid4().int)[:7]


@pytest.fixture(scope="module")
def connection_id(client):
    conn = client.account_connections.create_account_connection(
        request=TwilioAccountConnectionParams(
            type="account_connection_twilio",
            credentials=TwilioCredentials(twilio_account_sid="AC" + "2" * 32, twilio_auth_token="tok-for-numbers"),
        )
    )
    return conn.id


def test_agents(client, other):
    prompt = client.prompts.create_prompt(content="Ask Ajay if his refrigerator is running")
    voice = client.voices.create_voice(request=AzureVoiceParams(type="voice_azure", voice_name="en-US-Jenny"))
    end = client.actions.create_action(request={"type": "action_end_conversation"})
    agent = client.agents.create_agent(prompt=prompt.id, voice=voice.id, actions=[end.id], name="Fridge")
    assert agent.prompt.content == prompt.content and agent.voice.id == voice.id
    assert agent.actions[0].id == end.id
    assert (agent.language, agent.interrupt_sensitivity, agent.endpointing_sensitivity) == ("en", "low", "auto")
    assert (agent.ivr_navigation_mode, agent.conversation_speed, agent.initial_message_delay) == ("off", 1.0, 0.0)
    assert agent.llm_temperature == 0.0
    assert client.agents.get_agent(id=agent.id) == agent

    inline = client.agents.create_agent(
        prompt=PromptParams(content="Hola"),
        voice={"type": "voice_rime", "speaker": "young_female"},
        webhook=WebhookParams(subscriptions=["event_phone_call_ended"], url="https://crm.example/"),
        actions=[{"type": "action_transfer_call", "config": {"phone_number": "11234567890"}}],
        language="es",
    )
    assert inline.webhook.url == "https://crm.example/" and inline.actions[0].config.phone_number == "11234567890"

    page = client.agents.list_agents(size=100)
    listed = {a.id: a for a in page.items}
    assert listed[agent.id].prompt == prompt.id, "NormalizedAgent carries ids"
    assert listed[agent.id].actions == [end.id]

    updated = client.agents.update_agent(
        id=agent.id,
        prompt=PromptUpdateParams(content="Only this agent's words"),
        webhook=WebhookUpdateParams(subscriptions=["event_phone_call_ended"], url="https://example.com", method="POST"),
        actions=[TransferCallActionUpdateParams(type="action_transfer_call", config={"phone_number": "11234567890"})],
        initial_message="Hi!",
    )
    assert updated.prompt.content == "Only this agent's words"
    assert updated.prompt.id != prompt.id
    assert client.prompts.get_prompt(id=prompt.id).content == prompt.content, "the shared prompt is untouched"
    assert updated.webhook.url == "https://example.com"
    assert updated.name == "Fridge"
    assert updated.actions[0].type == "action_transfer_call"

    with pytest.raises(UnprocessableEntityError) as err:
        client.agents.create_agent(prompt=str(uuid.uuid4()), voice=voice.id)
    assert [".".join(map(str, e.loc)) for e in err.value.body.detail] == ["body.prompt"]
    with pytest.raises(UnprocessableEntityError):
        client.agents.create_agent(prompt=prompt.id, voice=voice.id, conversation_speed=3.0)
    with pytest.raises(UnprocessableEntityError):
        client.agents.create_agent(prompt=prompt.id, voice={"type": "voice_azure"})
    with pytest.raises(UnprocessableEntityError):
        other.agents.create_agent(prompt=prompt.id, voice=voice.id)
    with pytest.raises(ApiError) as err:
        other.agents.get_agent(id=agent.id)
    assert err.value.status_code == 404
    with pytest.raises(ApiError) as err:
        other.agents.update_agent(id=agent.id, name="stolen")
    assert err.value.status_code == 404


def test_numbers(client, other, connection_id):
    number = unique_number()
    linked = client.numbers.link_number(phone_number="+" + number, telephony_account_connection=connection_id)
    assert linked.number == number and linked.active and linked.telephony_provider == "twilio"
    assert linked.telephony_account_connection.id == connection_id
    assert linked.telephony_account_connection.credentials.twilio_auth_token.startswith("********")
    assert client.numbers.get_number(phone_number=number) == linked
    assert number in [n.number for n in client.numbers.list_numbers(size=100, sort_column="number").items]

    webhook = WebhookUpdateParams(subscriptions=["event_phone_call_ended"], url="https://example.com", method="POST")
    with pytest.raises(UnprocessableEntityError):
        # The number has no agent yet: update params must then describe a whole agent.
        client.numbers.update_number(phone_number=number, inbound_agent=AgentUpdateParams(webhook=webhook))
    with_agent = client.numbers.update_number(
        phone_number=number,
        label="front desk",
        inbound_agent={"prompt": {"content": "Answer kindly"}, "voice": {"type": "voice_vocode", "voice_id": "joe"}},
    )
    assert with_agent.label == "front desk" and with_agent.inbound_agent.prompt.content == "Answer kindly"
    hooked = client.numbers.update_number(phone_number=number, inbound_agent=AgentUpdateParams(webhook=webhook))
    assert hooked.inbound_agent.id == with_agent.inbound_agent.id
    assert hooked.inbound_agent.webhook.url == "https://example.com"
    listed = {n.number: n for n in client.numbers.list_numbers(size=100).items}
    assert listed[number].inbound_agent == with_agent.inbound_agent.id

    with pytest.raises(ApiError) as err:
        client.numbers.link_number(phone_number=number, telephony_account_connection=connection_id)
    assert err.value.status_code == 400
    with pytest.raises(ApiError) as err:
        other.numbers.get_number(phone_number=number)
    assert err.value.status_code == 404

    cancelled = client.numbers.cancel_number(phone_number=number)
    assert cancelled.active is False
    assert client.numbers.cancel_number(phone_number=number).active is False
    with pytest.raises(ApiError) as err:
        client.numbers.update_number(phone_number=number, label="x")
    assert err.value.status_code == 400

    default = client.numbers.link_number(phone_number=unique_number(), telephony_account_connection=connection_id, inbound_agent="default")
    assert default.inbound_agent is not None and default.inbound_agent.voice.type == "voice_vocode"

    with pytest.raises(UnprocessableEntityError):
        client.numbers.link_number(phone_number="1415abc0100", telephony_account_connection=connection_id)
    with pytest.raises(UnprocessableEntityError):
        client.numbers.get_number(phone_number="1" * 30)
    with pytest.raises(UnprocessableEntityError):
        client.numbers.link_number(phone_number=unique_number(), telephony_account_connection=str(uuid.uuid4()))
    with pytest.raises(UnprocessableEntityError):
        other.numbers.link_number(phone_number=unique_number(), telephony_account_connection=connection_id)


def test_usage(client, server):
    usage = client.usage.get_usage()
    assert usage.plan_type == "plan_unlimited"
    assert usage.monthly_usage_minutes == 0
    assert usage.monthly_usage_limit_minutes is None
    server.cli("users", "set-limit", "--user", usage.user_id, "--minutes", "500")
    assert client.usage.get_usage().monthly_usage_limit_minutes == 500
    server.cli("users", "set-limit", "--user", usage.user_id, "--clear")
    assert client.usage.get_usage().monthly_usage_limit_minutes is None
