"""Prompts, voices, webhooks, vector databases, account connections and actions — all 26 of
their operations — through the official SDK, as our users call them."""

import uuid

import pytest
from vocode import (
    AzureVoiceParams,
    AzureVoiceUpdateParams,
    CollectField,
    EndConversationActionParams,
    ExternalActionParams,
    ExternalActionConfig,
    FunctionCallActionTrigger,
    OpenAiAccountConnectionParams,
    OpenAiCredentials,
    PhraseBasedActionTriggerConfig,
    PhraseBasedActionTriggerInput,
    PhraseTrigger,
    PromptTemplate,
    RimeVoiceUpdateParams,
    TransferCallActionParams,
    TransferCallActionUpdateParams,
    TransferCallConfig,
    TwilioAccountConnectionParams,
    TwilioAccountConnectionUpdateParams,
    TwilioCredentials,
)
from vocode.core.api_error import ApiError
from vocode.errors.unprocessable_entity_error import UnprocessableEntityError


def ids(page):
    return [item.id for item in page.items]


def all_ids(list_fn):
    out, page = [], 1
    while True:
        got = list_fn(page=page, size=100)
        out += ids(got)
        if not got.has_more:
            return out
        page += 1


def locs(err):
    return [".".join(str(p) for p in e.loc) for e in err.value.body.detail]


def test_prompts(client, other):
    prompt = client.prompts.create_prompt(
        content="Ask ${name} whether the fridge is running",
        collect_fields=[CollectField(field_type="field_type_email", label="Email", name="email")],
        context_endpoint="https://context.example/lookup",
    )
    assert prompt.content.startswith("Ask")
    assert prompt.collect_fields[0].name == "email"
    assert client.prompts.get_prompt(id=prompt.id) == prompt
    assert prompt.id in all_ids(client.prompts.list_prompts)

    updated = client.prompts.update_prompt(id=prompt.id, content="New words")
    assert updated.content == "New words"
    assert updated.context_endpoint == "https://context.example/lookup", "absent fields stay"
    cleared = client.prompts.update_prompt(id=prompt.id, context_endpoint=None)
    assert cleared.context_endpoint is None

    template_id = str(uuid.uuid4())
    templated = client.prompts.create_prompt(
        content="Hi ${name}",
        prompt_template=PromptTemplate(id=template_id, user_id=str(uuid.uuid4()), required_context_keys=["name"]),
    )
    assert templated.prompt_template.id == template_id
    assert templated.prompt_template.user_id == templated.user_id
    listed = {p.id: p for p in client.prompts.list_prompts(size=100, sort_desc=True).items}
    assert listed[templated.id].prompt_template == template_id

    with pytest.raises(ApiError) as err:
        other.prompts.get_prompt(id=prompt.id)
    assert err.value.status_code == 404
    assert prompt.id not in all_ids(other.prompts.list_prompts)
    with pytest.raises(UnprocessableEntityError) as err:
        client.prompts.create_prompt(prompt_template="not-a-uuid")
    assert locs(err) == ["body.prompt_template"]


def test_voices(client, other):
    azure = client.voices.create_voice(request=AzureVoiceParams(type="voice_azure", voice_name="en-US-Jenny"))
    assert (azure.type, azure.pitch, azure.rate) == ("voice_azure", 0, 15)
    eleven = client.voices.create_voice(
        request={
            "type": "voice_eleven_labs",
            "voice_id": "06oPEcZqPWhZ2IeTcOJc",
            "stability": ".2",
            "similarity_boost": ".75",
            "model_id": "eleven_turbo_v2",
            "optimize_streaming_latency": "4",
            "api_key": "el-key-abcd1234",
        }
    )
    assert eleven.stability == 0.2 and eleven.optimize_streaming_latency == 4
    assert eleven.api_key == "********1234"
    assert client.voices.get_voice(id=eleven.id) == eleven

    renamed = client.voices.update_voice(id=azure.id, request=AzureVoiceUpdateParams(type="voice_azure", pitch=5))
    assert (renamed.voice_name, renamed.pitch) == ("en-US-Jenny", 5)
    switched = client.voices.update_voice(id=azure.id, request=RimeVoiceUpdateParams(type="voice_rime", speaker="x"))
    assert switched.type == "voice_rime" and switched.speaker == "x"

    page = client.voices.list_voices(size=100)
    assert {azure.id, eleven.id} <= set(ids(page))
    with pytest.raises(UnprocessableEntityError) as err:
        client.voices.create_voice(request={"type": "voice_azure"})
    assert locs(err) == ["body.voice_name"]
    with pytest.raises(UnprocessableEntityError):
        client.voices.create_voice(request={"type": "voice_martian", "voice_name": "x"})
    with pytest.raises(UnprocessableEntityError):
        client.voices.create_voice(request={"type": "voice_eleven_labs", "voice_id": "v", "stability": "very"})
    with pytest.raises(ApiError) as err:
        other.voices.update_voice(id=azure.id, request=AzureVoiceUpdateParams(type="voice_azure", pitch=1))
    assert err.value.status_code == 404


def test_webhooks(client, other):
    hook = client.webhooks.create_webhook(subscriptions=["event_phone_call_ended"], url="https://crm.example/hook")
    assert hook.method == "POST"
    assert client.webhooks.get_webhook(id=hook.id) == hook
    updated = client.webhooks.update_webhook(id=hook.id, method="GET", subscriptions=["event_message", "event_recording"])
    assert updated.method == "GET" and updated.url == "https://crm.example/hook"
    assert hook.id in all_ids(client.webhooks.list_webhooks)
    with pytest.raises(UnprocessableEntityError) as err:
        client.webhooks.create_webhook(subscriptions=["event_everything"], url="https://x.example")
    assert locs(err) == ["body.subscriptions.0"]
    with pytest.raises(UnprocessableEntityError):
        client.webhooks.create_webhook(subscriptions=[], url="not a url")
    assert hook.id not in all_ids(other.webhooks.list_webhooks)


def test_vector_databases(client, other):
    vdb = client.vector_databases.create_vector_database(index="faq", api_key="pc-secret-9876", api_environment="us-east1")
    assert vdb.type == "vector_database_pinecone" and vdb.api_key == "********9876"
    assert client.vector_databases.get_vector_database(id=vdb.id) == vdb
    kept = client.vector_databases.update_vector_database(id=vdb.id, index="faq2", api_key=vdb.api_key)
    assert kept.index == "faq2" and kept.api_key == "********9876", "the mask sent back keeps the key"
    assert vdb.id in all_ids(client.vector_databases.list_vector_databases)
    with pytest.raises(ApiError) as err:
        other.vector_databases.get_vector_database(id=vdb.id)
    assert err.value.status_code == 404


def test_account_connections_and_steering_pool(client, other):
    twilio = client.account_connections.create_account_connection(
        request=TwilioAccountConnectionParams(
            type="account_connection_twilio",
            credentials=TwilioCredentials(twilio_account_sid="AC" + "0" * 32, twilio_auth_token="auth-token-4321"),
        )
    )
    assert twilio.credentials.twilio_auth_token == "********4321"
    assert twilio.steering_pool == []
    openai = client.account_connections.create_account_connection(
        request=OpenAiAccountConnectionParams(
            type="account_connection_openai", credentials=OpenAiCredentials(openai_api_key="sk-live-c0de")
        )
    )
    assert openai.credentials.openai_api_key == "********c0de"
    assert client.account_connections.get_account_connection(id=twilio.id) == twilio
    assert {twilio.id, openai.id} <= set(all_ids(client.account_connections.list_account_connections))

    updated = client.account_connections.update_account_connection(
        id=twilio.id,
        request=TwilioAccountConnectionUpdateParams(
            type="account_connection_twilio",
            credentials=TwilioCredentials(twilio_account_sid="AC" + "1" * 32, twilio_auth_token="********4321"),
        ),
    )
    assert updated.credentials.twilio_account_sid.endswith("1" * 32)
    assert updated.credentials.twilio_auth_token == "********4321"

    added = client.account_connections.add_to_steering_pool(id=twilio.id, request={"phone_number": "+1 (415) 555-0111"})
    assert added["steering_pool"] == ["14155550111"]
    removed = client.account_connections.remove_from_steering_pool(id=twilio.id, phone_number="14155550111")
    assert removed["steering_pool"] == []
    # Without a number, one is bought on the connection's Twilio account for the pool (here the
    # sandbox carrier's), as the warm-transfer guide says.
    bought = client.account_connections.add_to_steering_pool(id=twilio.id)
    assert len(bought["steering_pool"]) == 1, bought
    assert bought["steering_pool"][0].isdigit() and bought["steering_pool"][0] != "14155550111", bought
    with pytest.raises(ApiError) as err:
        other.account_connections.add_to_steering_pool(id=twilio.id, request={"phone_number": "14155550111"})
    assert err.value.status_code == 404
    with pytest.raises(UnprocessableEntityError):
        client.account_connections.create_account_connection(
            request={"type": "account_connection_twilio", "credentials": {"twilio_account_sid": "AC1"}}
        )


def test_actions(client, other):
    end = client.actions.create_action(request=EndConversationActionParams(type="action_end_conversation"))
    assert end.action_trigger.type == "action_trigger_function_call"
    transfer = client.actions.create_action(
        request=TransferCallActionParams(
            type="action_transfer_call",
            config=TransferCallConfig(phone_number="11234567890"),
            action_trigger=PhraseBasedActionTriggerInput(
                type="action_trigger_phrase_based",
                config=PhraseBasedActionTriggerConfig(
                    phrase_triggers=[PhraseTrigger(phrase="I will transfer now", conditions=["phrase_condition_type_contains"])]
                ),
            ),
        )
    )
    assert transfer.config.phone_number == "11234567890"
    assert transfer.action_trigger.config.phrase_triggers[0].phrase == "I will transfer now"
    external = client.actions.create_action(
        request=ExternalActionParams(
            type="action_external",
            config=ExternalActionConfig(
                name="Meeting_Booking_Assistant",
                description="Book a meeting for a 30 minute or 1 hour call.",
                url="http://example.com/booking",
                input_schema={"type": "object", "properties": {"length": {"type": "string", "enum": ["30m", "1hr"]}}},
                speak_on_send=True,
                speak_on_receive=True,
            ),
            action_trigger=FunctionCallActionTrigger(type="action_trigger_function_call"),
        )
    )
    assert not external.config.signature_secret.startswith("*"), "shown once, on create"
    fetched = client.actions.get_action(id=external.id)
    assert fetched.config.signature_secret.startswith("********")

    moved = client.actions.update_action(
        id=transfer.id,
        request=TransferCallActionUpdateParams(type="action_transfer_call", config=TransferCallConfig(phone_number="19998887777")),
    )
    assert moved.config.phone_number == "19998887777"
    assert moved.action_trigger.type == "action_trigger_phrase_based", "absent fields stay"
    assert {end.id, transfer.id, external.id} <= set(all_ids(client.actions.list_actions))
    with pytest.raises(UnprocessableEntityError) as err:
        client.actions.create_action(request={"type": "action_transfer_call", "config": {}})
    assert locs(err) == ["body.config.phone_number"]
    with pytest.raises(ApiError) as err:
        other.actions.get_action(id=end.id)
    assert err.value.status_code == 404


def test_lists_page_and_refuse_bad_parameters(client):
    for _ in range(3):
        client.webhooks.create_webhook(subscriptions=[], url="https://page.example/")
    first = client.webhooks.list_webhooks(page=1, size=2)
    assert len(first.items) == 2 and first.has_more and first.total >= 3
    assert first.total_is_estimated is False
    desc = client.webhooks.list_webhooks(size=1, sort_column="created_at", sort_desc=True)
    asc = client.webhooks.list_webhooks(size=1, sort_column="created_at")
    assert desc.items[0].id != asc.items[0].id
    for kwargs in ({"size": 1000}, {"page": 0}, {"sort_column": "password"}):
        with pytest.raises(UnprocessableEntityError):
            client.webhooks.list_webhooks(**kwargs)


def test_a_bad_key_is_refused(server):
    from vocode.client import Vocode

    with pytest.raises(ApiError) as err:
        Vocode(base_url=server.base_url, token="vk_wrong").prompts.list_prompts()
    assert err.value.status_code == 401
