//! Agents, phone numbers and usage through HTTP, on SQLite and on Postgres.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{error_locs, on_both_backends, Backend, TestApp};

on_both_backends!(
    agents_take_ids_or_inline_objects_with_the_spec_defaults,
    a_bad_reference_creates_nothing,
    agent_dials_are_checked,
    agent_updates_never_edit_shared_objects,
    openai_connections_by_id_or_inline,
    numbers_link_get_list_update_cancel,
    numbers_belong_to_one_user,
    number_updates_apply_to_the_inbound_agent,
    usage_starts_at_zero_with_no_limit,
);

async fn ok(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = app.post(path, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{path} {body}: {answer}");
    answer
}

async fn total(app: &TestApp, path: &str) -> i64 {
    app.get(&format!("/v1/{path}/list")).await.1["total"].as_i64().unwrap()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

async fn twilio_connection(app: &TestApp) -> String {
    id(&ok(
        app,
        "/v1/account_connections/create",
        json!({"type": "account_connection_twilio",
               "credentials": {"twilio_account_sid": "AC00000000000000000000000000000000", "twilio_auth_token": "tok-123456789"}}),
    )
    .await)
}

async fn agents_take_ids_or_inline_objects_with_the_spec_defaults(app: TestApp) {
    let prompt = ok(&app, "/v1/prompts/create", json!({"content": "Be brief"})).await;
    let voice = ok(&app, "/v1/voices/create", json!({"type": "voice_azure", "voice_name": "en-US-Jenny"})).await;
    let action = ok(&app, "/v1/actions/create", json!({"type": "action_end_conversation"})).await;
    let webhook = ok(
        &app,
        "/v1/webhooks/create",
        json!({"subscriptions": ["event_phone_call_ended"], "url": "https://crm.example/"}),
    )
    .await;
    let by_id = ok(
        &app,
        "/v1/agents/create",
        json!({"prompt": id(&prompt), "voice": id(&voice), "actions": [id(&action)], "webhook": id(&webhook)}),
    )
    .await;
    assert_eq!(by_id["prompt"], prompt, "the full prompt is embedded");
    assert_eq!(by_id["voice"], voice);
    assert_eq!(by_id["actions"], json!([action]));
    assert_eq!(by_id["webhook"], webhook);
    for (field, default) in [
        ("language", json!("en")),
        ("interrupt_sensitivity", json!("low")),
        ("endpointing_sensitivity", json!("auto")),
        ("ivr_navigation_mode", json!("off")),
        ("conversation_speed", json!(1.0)),
        ("initial_message_delay", json!(0.0)),
        ("llm_temperature", json!(0.0)),
        ("noise_suppression", json!(false)),
        ("ask_if_human_present_on_idle", json!(false)),
        ("run_do_not_call_detection", json!(false)),
        ("vector_database", Value::Null),
        ("openai_account_connection", Value::Null),
        ("idle_time_seconds", Value::Null),
    ] {
        assert_eq!(by_id[field], default, "{field}");
    }
    let (_, fetched) = app.get(&format!("/v1/agents?id={}", id(&by_id))).await;
    assert_eq!(fetched, by_id);

    let inline = ok(
        &app,
        "/v1/agents/create",
        json!({"name": "Receptionist", "language": "es", "prompt": {"content": "Hola"},
               "voice": {"type": "voice_rime", "speaker": "s"},
               "actions": [{"type": "action_transfer_call", "config": {"phone_number": "11234567890"}}, id(&action)],
               "vector_database": {"type": "vector_database_pinecone", "index": "i", "api_key": "pc-key-12345", "api_environment": "e"},
               "conversation_speed": 2, "idle_time_seconds": 30, "deepgram_keywords": {"Vocode": 2.5}}),
    )
    .await;
    assert_eq!(inline["prompt"]["content"], "Hola");
    assert_eq!(inline["actions"][0]["type"], "action_transfer_call");
    assert_eq!(inline["actions"][1], action, "actions keep their order");
    assert_eq!(inline["vector_database"]["api_key"], "********2345");
    assert_eq!(inline["deepgram_keywords"], json!({"Vocode": 2.5}));
    // Inline objects belong to the caller like any other.
    let (status, voice_back) = app.get(&format!("/v1/voices?id={}", inline["voice"]["id"].as_str().unwrap())).await;
    assert_eq!((status, voice_back["speaker"].clone()), (StatusCode::OK, json!("s")));

    let (_, page) = app.get("/v1/agents/list?sort_desc=true").await;
    assert_eq!(page["total"], 2);
    let normalized = &page["items"][0];
    assert_eq!(normalized["id"], inline["id"]);
    assert_eq!(normalized["prompt"], inline["prompt"]["id"], "lists carry ids");
    assert_eq!(normalized["voice"], inline["voice"]["id"]);
    assert_eq!(normalized["actions"], json!([inline["actions"][0]["id"], action["id"]]));
}

async fn a_bad_reference_creates_nothing(app: TestApp) {
    let (_, other_key) = app.new_user("eve").await;
    let (_, eves_voice) =
        app.post_as(&other_key, "/v1/voices/create", json!({"type": "voice_vocode", "voice_id": "joe"})).await;
    let eves_voice = id(&eves_voice);
    let missing = uuid::Uuid::new_v4().to_string();
    let cases = [
        (json!({"prompt": {}, "voice": missing}), "body.voice"),
        (json!({"prompt": {}, "voice": eves_voice}), "body.voice"),
        (json!({"prompt": missing, "voice": {"type": "voice_vocode", "voice_id": "joe"}}), "body.prompt"),
        (
            json!({"prompt": {}, "voice": {"type": "voice_vocode", "voice_id": "joe"}, "webhook": missing}),
            "body.webhook",
        ),
        (
            json!({"prompt": {}, "voice": {"type": "voice_vocode", "voice_id": "joe"}, "actions": [missing]}),
            "body.actions.0",
        ),
        // The fifth inline object is wrong: the four before it must not survive.
        (
            json!({"prompt": {"content": "p"}, "voice": {"type": "voice_vocode", "voice_id": "joe"},
                   "webhook": {"subscriptions": [], "url": "https://w.example"},
                   "vector_database": {"type": "vector_database_pinecone", "index": "i", "api_key": "k", "api_environment": "e"},
                   "actions": [{"type": "action_dtmf"}, {"type": "action_external", "config": {"name": "n", "description": "d",
                       "url": "gopher://nope", "input_schema": {}, "speak_on_send": true, "speak_on_receive": true}}]}),
            "body.actions.1.config.url",
        ),
        (json!({"prompt": {}, "voice": {"type": "voice_azure"}}), "body.voice"),
        (
            json!({"prompt": {}, "voice": {"type": "voice_vocode", "voice_id": "joe"}, "actions": [{"type": "action_dial_home"}]}),
            "body.actions.0",
        ),
        (json!({"voice": {"type": "voice_vocode", "voice_id": "joe"}}), "body.prompt"),
    ];
    for (body, loc) in cases {
        let (status, answer) = app.post("/v1/agents/create", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(error_locs(&answer).iter().any(|l| l.starts_with(loc)), "{body}: expected {loc} in {answer}");
    }
    for path in ["agents", "prompts", "voices", "webhooks", "vector_databases", "actions"] {
        assert_eq!(total(&app, path).await, 0, "{path}: nothing half-created");
    }
    // Another user's agent id is refused where an agent id is taken.
    let (_, agent) = app.post_as(&other_key, "/v1/agents/create", json!({"prompt": {}, "voice": eves_voice})).await;
    let conn = twilio_connection(&app).await;
    let (status, body) = app
        .post(
            "/v1/numbers/link",
            json!({"phone_number": "14155550123", "telephony_account_connection": conn, "inbound_agent": id(&agent)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.inbound_agent"]);
    assert_eq!(total(&app, "numbers").await, 0);
}

async fn agent_dials_are_checked(app: TestApp) {
    let base = json!({"prompt": {}, "voice": {"type": "voice_vocode", "voice_id": "joe"}});
    for (field, value, kind) in [
        ("conversation_speed", json!(0.4), "greater_than_equal"),
        ("conversation_speed", json!(2.01), "less_than_equal"),
        ("initial_message_delay", json!(-0.5), "greater_than_equal"),
        ("idle_time_seconds", json!(-1), "greater_than_equal"),
        ("idle_time_seconds", json!(1.5), "int_from_float"),
        ("language", json!("xx"), "enum"),
        ("interrupt_sensitivity", json!("medium"), "enum"),
        ("endpointing_sensitivity", json!("eager"), "enum"),
        ("llm_temperature", json!(5), "less_than_equal"),
    ] {
        let mut body = base.clone();
        body[field] = value.clone();
        let (status, answer) = app.post("/v1/agents/create", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}={value}");
        assert_eq!(error_locs(&answer), [format!("body.{field}")], "{field}={value}");
        assert_eq!(answer["detail"][0]["type"], kind, "{field}={value}");
    }
    let mut edge = base.clone();
    edge["conversation_speed"] = json!(0.5);
    edge["initial_message_delay"] = json!("1.5");
    let agent = ok(&app, "/v1/agents/create", edge).await;
    assert_eq!((agent["conversation_speed"].clone(), agent["initial_message_delay"].clone()), (json!(0.5), json!(1.5)));
    let (status, _) = app.post(&format!("/v1/agents/update?id={}", id(&agent)), json!({"conversation_speed": 9})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, unchanged) = app.get(&format!("/v1/agents?id={}", id(&agent))).await;
    assert_eq!(unchanged["conversation_speed"], json!(0.5));
}

async fn agent_updates_never_edit_shared_objects(app: TestApp) {
    let prompt =
        ok(&app, "/v1/prompts/create", json!({"content": "shared words", "context_endpoint": "https://c.example"}))
            .await;
    let voice = ok(&app, "/v1/voices/create", json!({"type": "voice_azure", "voice_name": "shared"})).await;
    let first = ok(
        &app,
        "/v1/agents/create",
        json!({"prompt": id(&prompt), "voice": id(&voice), "initial_message": "hi", "name": "A"}),
    )
    .await;
    let second = ok(&app, "/v1/agents/create", json!({"prompt": id(&prompt), "voice": id(&voice)})).await;

    let updated = ok(
        &app,
        &format!("/v1/agents/update?id={}", id(&first)),
        json!({"prompt": {"content": "only mine"}, "voice": {"type": "voice_azure", "pitch": 4},
               "initial_message": null, "name": {}, "language": "de", "webhook": null}),
    )
    .await;
    assert_eq!(updated["prompt"]["content"], "only mine");
    assert_eq!(updated["prompt"]["context_endpoint"], "https://c.example", "derived from the current prompt");
    assert_ne!(updated["prompt"]["id"], prompt["id"]);
    assert_eq!(
        (updated["voice"]["voice_name"].clone(), updated["voice"]["pitch"].clone()),
        (json!("shared"), json!(4))
    );
    assert_eq!(updated["initial_message"], Value::Null, "null clears");
    assert_eq!(updated["name"], "A", "Undefined keeps");
    assert_eq!(updated["language"], "de");

    let (_, shared_prompt) = app.get(&format!("/v1/prompts?id={}", id(&prompt))).await;
    assert_eq!(shared_prompt, prompt, "the shared prompt is untouched");
    let (_, other) = app.get(&format!("/v1/agents?id={}", id(&second))).await;
    assert_eq!(other, second, "the other agent is untouched");

    // A new id replaces a reference; the voice may change type through an inline update.
    let switched = ok(
        &app,
        &format!("/v1/agents/update?id={}", id(&first)),
        json!({"prompt": id(&prompt), "voice": {"type": "voice_rime", "speaker": "x"}, "actions": [{"type": "action_dtmf"}]}),
    )
    .await;
    assert_eq!(switched["prompt"], prompt);
    assert_eq!(switched["voice"]["type"], "voice_rime");
    assert_eq!(switched["actions"][0]["type"], "action_dtmf");
    // A new webhook needs a URL; a webhook update on an agent without one cannot invent it.
    let (status, body) =
        app.post(&format!("/v1/agents/update?id={}", id(&first)), json!({"webhook": {"method": "GET"}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_locs(&body).contains(&"body.webhook.url".to_owned()), "{body}");
    let (status, _) = app.post(&format!("/v1/agents/update?id={}", uuid::Uuid::new_v4()), json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn openai_connections_by_id_or_inline(app: TestApp) {
    let openai = ok(
        &app,
        "/v1/account_connections/create",
        json!({"type": "account_connection_openai", "credentials": {"openai_api_key": "sk-abcdef-0042"}}),
    )
    .await;
    let voice = json!({"type": "voice_vocode", "voice_id": "joe"});
    let agent =
        ok(&app, "/v1/agents/create", json!({"prompt": {}, "voice": voice, "openai_account_connection": id(&openai)}))
            .await;
    assert_eq!(agent["openai_account_connection"], openai);
    assert_eq!(agent["openai_account_connection"]["credentials"]["openai_api_key"], "********0042");

    // The whole object, as a get returned it (masked key and all), refers to the same connection.
    let again =
        ok(&app, "/v1/agents/create", json!({"prompt": {}, "voice": voice, "openai_account_connection": openai})).await;
    assert_eq!(again["openai_account_connection"]["id"], openai["id"]);
    let new_conn = ok(
        &app,
        "/v1/agents/create",
        json!({"prompt": {}, "voice": voice, "openai_account_connection": {"id": uuid::Uuid::new_v4(), "user_id": uuid::Uuid::new_v4(),
               "type": "account_connection_openai", "credentials": {"openai_api_key": "sk-fresh-9999"}}}),
    )
    .await;
    assert_ne!(new_conn["openai_account_connection"]["id"], openai["id"]);
    assert_eq!(new_conn["openai_account_connection"]["credentials"]["openai_api_key"], "********9999");
    let (status, body) = app
        .post(
            "/v1/agents/create",
            json!({"prompt": {}, "voice": voice, "openai_account_connection": {"id": uuid::Uuid::new_v4(), "user_id": uuid::Uuid::new_v4(),
                   "type": "account_connection_openai", "credentials": {"openai_api_key": "********0042"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.openai_account_connection.credentials.openai_api_key"]);
    let twilio = twilio_connection(&app).await;
    let (status, body) =
        app.post("/v1/agents/create", json!({"prompt": {}, "voice": voice, "openai_account_connection": twilio})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("not an OpenAI"));
    let cleared =
        ok(&app, &format!("/v1/agents/update?id={}", id(&agent)), json!({"openai_account_connection": null})).await;
    assert_eq!(cleared["openai_account_connection"], Value::Null);
}

async fn numbers_link_get_list_update_cancel(app: TestApp) {
    let conn = twilio_connection(&app).await;
    let linked = ok(
        &app,
        "/v1/numbers/link",
        json!({"phone_number": "+1 (415) 555-0100", "telephony_account_connection": conn}),
    )
    .await;
    assert_eq!(linked["number"], "14155550100");
    assert_eq!(linked["active"], true);
    assert_eq!(linked["label"], "");
    assert_eq!(linked["outbound_only"], false);
    assert_eq!(linked["inbound_agent"], Value::Null);
    assert_eq!(linked["telephony_provider"], "twilio");
    assert_eq!(linked["telephony_account_connection"]["id"], json!(conn));
    assert_eq!(linked["telephony_account_connection"]["credentials"]["twilio_auth_token"], "********6789");

    for form in ["14155550100", "+14155550100", "1-415-555-0100"] {
        let (status, got) = app.get(&format!("/v1/numbers?phone_number={}", urlencode(form))).await;
        assert_eq!(status, StatusCode::OK, "{form}");
        assert_eq!(got, linked);
    }
    let (status, body) = app.get("/v1/numbers?phone_number=14155550199").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().contains("14155550199"));
    for bad in ["abc", "1415555010O", "123", "1234567890123456789012345678"] {
        let (status, body) = app.get(&format!("/v1/numbers?phone_number={bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(error_locs(&body), ["query.phone_number"]);
        let (status, body) =
            app.post("/v1/numbers/link", json!({"phone_number": bad, "telephony_account_connection": conn})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(error_locs(&body), ["body.phone_number"]);
    }

    let with_agent = ok(
        &app,
        "/v1/numbers/link",
        json!({"phone_number": "14155550101", "telephony_account_connection": conn, "outbound_only": true,
               "inbound_agent": {"prompt": {"content": "answer"}, "voice": {"type": "voice_vocode", "voice_id": "joe"}}}),
    )
    .await;
    assert_eq!(with_agent["outbound_only"], true);
    assert_eq!(with_agent["inbound_agent"]["prompt"]["content"], "answer");
    let default = ok(
        &app,
        "/v1/numbers/link",
        json!({"phone_number": "14155550102", "telephony_account_connection": conn, "inbound_agent": "default"}),
    )
    .await;
    assert_eq!(default["inbound_agent"]["voice"]["type"], "voice_vocode");

    let (_, page) = app.get("/v1/numbers/list?sort_column=number&sort_desc=true").await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"][0]["number"], "14155550102");
    assert_eq!(page["items"][0]["inbound_agent"], default["inbound_agent"]["id"], "lists carry ids");
    assert_eq!(page["items"][0]["telephony_account_connection"], json!(conn));

    let updated = ok(
        &app,
        "/v1/numbers/update?phone_number=14155550100",
        json!({"label": "front desk", "outbound_only": true, "example_context": {"name": "Ajay"}}),
    )
    .await;
    assert_eq!((updated["label"].clone(), updated["outbound_only"].clone()), (json!("front desk"), json!(true)));
    assert_eq!(updated["example_context"], json!({"name": "Ajay"}));
    let kept =
        ok(&app, "/v1/numbers/update?phone_number=14155550100", json!({"label": {}, "example_context": null})).await;
    assert_eq!(kept["label"], "front desk");
    assert_eq!(kept["example_context"], Value::Null);
    let (status, body) = app.post("/v1/numbers/update?phone_number=14155550100", json!({"label": null})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a label cannot be null: {body}");

    let cancelled = ok(&app, "/v1/numbers/cancel?phone_number=14155550100", json!(null)).await;
    assert_eq!(cancelled["active"], false);
    let twice = ok(&app, "/v1/numbers/cancel?phone_number=14155550100", json!(null)).await;
    assert_eq!(twice, cancelled, "cancelling twice is harmless");
    let (status, body) = app.post("/v1/numbers/update?phone_number=14155550100", json!({"label": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("cancelled"));
    let relinked =
        ok(&app, "/v1/numbers/link", json!({"phone_number": "14155550100", "telephony_account_connection": conn}))
            .await;
    assert_eq!((relinked["active"].clone(), relinked["id"].clone()), (json!(true), linked["id"].clone()));
    let (status, body) = app
        .post("/v1/numbers/link", json!({"phone_number": "14155550100", "telephony_account_connection": conn}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "linking an active number again");
    assert!(body["detail"].as_str().unwrap().contains("already linked"));

    let openai = ok(
        &app,
        "/v1/account_connections/create",
        json!({"type": "account_connection_openai", "credentials": {"openai_api_key": "sk-12345678"}}),
    )
    .await;
    let (status, body) = app
        .post("/v1/numbers/link", json!({"phone_number": "14155550109", "telephony_account_connection": id(&openai)}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.telephony_account_connection"]);
    let (status, body) = app.post("/v1/numbers/link", json!({"phone_number": "14155550109"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.telephony_account_connection"]);
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(' ', "%20")
}

async fn numbers_belong_to_one_user(app: TestApp) {
    let conn = twilio_connection(&app).await;
    ok(&app, "/v1/numbers/link", json!({"phone_number": "14155550200", "telephony_account_connection": conn})).await;
    let (_, other_key) = app.new_user("frank").await;
    let (_, their_conn) = app
        .post_as(
            &other_key,
            "/v1/account_connections/create",
            json!({"type": "account_connection_twilio",
            "credentials": {"twilio_account_sid": "AC1", "twilio_auth_token": "their-token-1"}}),
        )
        .await;
    let (status, body) = app
        .post_as(
            &other_key,
            "/v1/numbers/link",
            json!({"phone_number": "14155550200", "telephony_account_connection": id(&their_conn)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.phone_number"]);
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("another account"));
    // Their connection is not ours to link with, and ours not theirs.
    let (status, _) = app
        .post(
            "/v1/numbers/link",
            json!({"phone_number": "14155550201", "telephony_account_connection": id(&their_conn)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for (method, path) in [
        ("GET", "/v1/numbers?phone_number=14155550200"),
        ("POST", "/v1/numbers/update?phone_number=14155550200"),
        ("POST", "/v1/numbers/cancel?phone_number=14155550200"),
    ] {
        let res = app
            .request(
                method.parse().unwrap(),
                path,
                Some(&other_key),
                (method == "POST").then_some(&json!({"label": "mine"})),
            )
            .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    let (_, theirs) = app.get_as(&other_key, "/v1/numbers/list").await;
    assert_eq!(theirs["total"], 0);
    let (_, mine) = app.get("/v1/numbers?phone_number=14155550200").await;
    assert_eq!((mine["active"].clone(), mine["label"].clone()), (json!(true), json!("")));

    // Once cancelled, the number is free for another account.
    ok(&app, "/v1/numbers/cancel?phone_number=14155550200", json!(null)).await;
    let (status, theirs) = app
        .post_as(
            &other_key,
            "/v1/numbers/link",
            json!({"phone_number": "14155550200", "telephony_account_connection": id(&their_conn)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{theirs}");
    let (status, _) = app
        .post("/v1/numbers/link", json!({"phone_number": "14155550200", "telephony_account_connection": conn}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn number_updates_apply_to_the_inbound_agent(app: TestApp) {
    let conn = twilio_connection(&app).await;
    let number = ok(
        &app,
        "/v1/numbers/link",
        json!({"phone_number": "14155550300", "telephony_account_connection": conn,
               "inbound_agent": {"prompt": {"content": "v1"}, "voice": {"type": "voice_vocode", "voice_id": "joe"}}}),
    )
    .await;
    let agent_id = number["inbound_agent"]["id"].clone();
    let updated = ok(
        &app,
        "/v1/numbers/update?phone_number=14155550300",
        json!({"inbound_agent": {"webhook": {"subscriptions": ["event_phone_call_ended"], "url": "https://example.com", "method": "POST"},
                                  "language": "es"}}),
    )
    .await;
    assert_eq!(updated["inbound_agent"]["id"], agent_id, "update params apply to the number's agent");
    assert_eq!(updated["inbound_agent"]["webhook"]["url"], "https://example.com");
    assert_eq!(updated["inbound_agent"]["language"], "es");
    let (_, agent) = app.get(&format!("/v1/agents?id={}", agent_id.as_str().unwrap())).await;
    assert_eq!(agent, updated["inbound_agent"]);

    let other_agent =
        ok(&app, "/v1/agents/create", json!({"prompt": {}, "voice": {"type": "voice_vocode", "voice_id": "joe"}}))
            .await;
    let moved =
        ok(&app, "/v1/numbers/update?phone_number=14155550300", json!({"inbound_agent": id(&other_agent)})).await;
    assert_eq!(moved["inbound_agent"]["id"], other_agent["id"]);
    let none = ok(&app, "/v1/numbers/update?phone_number=14155550300", json!({"inbound_agent": null})).await;
    assert_eq!(none["inbound_agent"], Value::Null);
    // Without an agent, update params must describe a whole new agent.
    let (status, body) =
        app.post("/v1/numbers/update?phone_number=14155550300", json!({"inbound_agent": {"language": "de"}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_locs(&body).contains(&"body.inbound_agent.voice".to_owned()), "{body}");
    let created = ok(
        &app,
        "/v1/numbers/update?phone_number=14155550300",
        json!({"inbound_agent": {"prompt": {"content": "new"}, "voice": {"type": "voice_vocode", "voice_id": "joe"}}}),
    )
    .await;
    assert_eq!(created["inbound_agent"]["prompt"]["content"], "new");
    let (status, _) =
        app.post("/v1/numbers/update?phone_number=14155550300", json!({"inbound_agent": uuid::Uuid::new_v4()})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn usage_starts_at_zero_with_no_limit(app: TestApp) {
    let (status, usage) = app.get("/v1/usage").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(usage["plan_type"], "plan_unlimited");
    assert_eq!(usage["monthly_usage_minutes"], 0);
    assert_eq!(usage["monthly_usage_limit_minutes"], Value::Null);
    let (user_id, key) = app.new_user("grace").await;
    let mut tx = app.store().begin().await.unwrap();
    vocode_server::store::users::set_usage_limit(tx.conn(), user_id, Some(120)).await.unwrap();
    tx.commit().await.unwrap();
    let (_, usage) = app.get_as(&key, "/v1/usage").await;
    assert_eq!(usage["user_id"], json!(user_id.to_string()));
    assert_eq!(usage["monthly_usage_limit_minutes"], 120);
    let (_, mine) = app.get("/v1/usage").await;
    assert_eq!(mine["monthly_usage_limit_minutes"], Value::Null, "limits are per user");
}

#[tokio::test]
async fn the_command_line_sets_and_clears_limits() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_vocode-server");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .env("SECRETS_KEY", &app.secrets_key)
            .output()
            .unwrap()
    };
    let out = run(&["users", "set-limit", "--user", "default", "--minutes", "90"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(app.get("/v1/usage").await.1["monthly_usage_limit_minutes"], 90);
    let out = run(&["users", "set-limit", "--user", "default", "--clear"]);
    assert!(out.status.success());
    assert_eq!(app.get("/v1/usage").await.1["monthly_usage_limit_minutes"], Value::Null);
    assert!(!run(&["users", "set-limit", "--user", "nobody", "--minutes", "5"]).status.success());
    assert!(!run(&["users", "set-limit", "--user", "default"]).status.success(), "minutes or --clear is required");
}
