//! Prompts, voices, webhooks, vector databases, account connections and actions through HTTP,
//! on SQLite and on Postgres: defaults, updates, secrets, lists, bad input and isolation.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{error_locs, on_both_backends, read, Backend, TestApp, OPENAPI_YAML};

on_both_backends!(
    every_resource_round_trips_with_the_spec_defaults,
    updates_follow_absent_undefined_and_null,
    a_type_change_is_validated_as_a_new_value,
    secrets_are_masked_sealed_and_kept_when_sent_back,
    external_action_secret_is_generated_and_shown_once,
    prompt_templates_inline_or_by_id,
    lists_page_sort_and_count,
    bad_input_is_refused_and_changes_nothing,
    another_user_sees_nothing,
    steering_pool_keeps_numbers,
    strings_full_of_metacharacters_are_stored_verbatim,
    numbers_at_the_limits_of_a_double_are_stored_and_read_back,
);

/// Creates through `/v1/{path}/create`, and checks get and list show the same object.
async fn create(app: &TestApp, path: &str, params: Value) -> Value {
    let (status, created) = app.post(&format!("/v1/{path}/create"), params.clone()).await;
    assert_eq!(status, StatusCode::OK, "create {path}: {created}");
    let id = created["id"].as_str().expect("an id").to_owned();
    let (status, fetched) = app.get(&format!("/v1/{path}?id={id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created, "get shows what create returned");
    created
}

async fn count(app: &TestApp, path: &str) -> i64 {
    let (status, page) = app.get(&format!("/v1/{path}/list")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["total"].as_i64().unwrap()
}

async fn every_resource_round_trips_with_the_spec_defaults(app: TestApp) {
    let prompt = create(&app, "prompts", json!({})).await;
    assert_eq!(prompt["content"], "");
    assert_eq!(prompt["collect_fields"], Value::Null);
    assert_eq!(prompt["prompt_template"], Value::Null);
    let user_id = prompt["user_id"].as_str().unwrap().to_owned();
    assert_eq!(user_id.len(), 36);

    let azure = create(&app, "voices", json!({"type": "voice_azure", "voice_name": "en-US-Steffan"})).await;
    assert_eq!((azure["pitch"].clone(), azure["rate"].clone()), (json!(0), json!(15)));
    let play = create(&app, "voices", json!({"type": "voice_play_ht", "voice_id": "v1"})).await;
    assert_eq!(play["version"], "2");
    assert_eq!(play["experimental_remove_silence"], false);
    let rime = create(&app, "voices", json!({"type": "voice_rime", "speaker": "young_male"})).await;
    assert_eq!(rime["model_id"], Value::Null);
    let vocode = create(&app, "voices", json!({"type": "voice_vocode", "voice_id": "joe"})).await;
    assert_eq!(vocode["voice_id"], "joe");
    let eleven = create(
        &app,
        "voices",
        json!({"type": "voice_eleven_labs", "voice_id": "06oPEcZqPWhZ2IeTcOJc", "stability": ".2",
               "similarity_boost": ".75", "model_id": "eleven_turbo_v2", "optimize_streaming_latency": "4"}),
    )
    .await;
    // The guide sends numbers as strings; pydantic reads them as numbers, and so do we.
    assert_eq!(eleven["stability"], json!(0.2));
    assert_eq!(eleven["optimize_streaming_latency"], json!(4));

    let webhook = create(
        &app,
        "webhooks",
        json!({"subscriptions": ["event_phone_call_ended"], "url": "https://example.com/hook"}),
    )
    .await;
    assert_eq!(webhook["method"], "POST");

    let vdb = create(
        &app,
        "vector_databases",
        json!({"type": "vector_database_pinecone", "index": "idx", "api_key": "pc-1234567890", "api_environment": "us-east1"}),
    )
    .await;
    assert_eq!(vdb["api_key"], "********7890");

    let twilio = create(
        &app,
        "account_connections",
        json!({"type": "account_connection_twilio",
               "credentials": {"twilio_account_sid": "AC0123", "twilio_auth_token": "token-abcdef"}}),
    )
    .await;
    assert_eq!(twilio["steering_pool"], json!([]));
    assert_eq!(twilio["account_supports_any_caller_id"], false);
    let openai = create(
        &app,
        "account_connections",
        json!({"type": "account_connection_openai", "credentials": {"openai_api_key": "sk-test-c0de-c0de"}}),
    )
    .await;
    assert_eq!(openai["credentials"]["openai_api_key"], "********c0de");

    for (params, expected_config) in [
        (json!({"type": "action_end_conversation"}), json!({})),
        (json!({"type": "action_dtmf"}), json!({})),
        (json!({"type": "action_set_hold", "config": {}}), json!({})),
        (
            json!({"type": "action_transfer_call", "config": {"phone_number": "11234567890"}}),
            json!({"phone_number": "11234567890"}),
        ),
        (
            json!({"type": "action_add_to_conference", "config": {"phone_number": "{transfer_phone_number}"}}),
            json!({"phone_number": "{transfer_phone_number}", "place_primary_on_hold": true}),
        ),
    ] {
        let action = create(&app, "actions", params).await;
        assert_eq!(action["config"], expected_config);
        assert_eq!(action["action_trigger"], json!({"type": "action_trigger_function_call", "config": {}}));
    }
    let phrase = create(
        &app,
        "actions",
        json!({"type": "action_end_conversation", "action_trigger": {"type": "action_trigger_phrase_based",
               "config": {"phrase_triggers": [{"phrase": "bye", "conditions": ["phrase_condition_type_contains"]}]}}}),
    )
    .await;
    assert_eq!(phrase["action_trigger"]["config"]["phrase_triggers"][0]["phrase"], "bye");

    assert_eq!(count(&app, "voices").await, 5);
    assert_eq!(count(&app, "actions").await, 6);
}

async fn updates_follow_absent_undefined_and_null(app: TestApp) {
    let voice = create(
        &app,
        "voices",
        json!({"type": "voice_eleven_labs", "voice_id": "a", "stability": 0.5, "model_id": "m"}),
    )
    .await;
    let id = voice["id"].as_str().unwrap();
    // Absent and Undefined ({}) leave a field alone; null clears it; a value replaces it.
    let (status, updated) = app
        .post(
            &format!("/v1/voices/update?id={id}"),
            json!({"type": "voice_eleven_labs", "stability": {}, "model_id": null, "voice_id": "b"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["stability"], json!(0.5));
    assert_eq!(updated["model_id"], Value::Null);
    assert_eq!(updated["voice_id"], "b");
    assert_eq!(updated["id"], voice["id"]);
    let (_, fetched) = app.get(&format!("/v1/voices?id={id}")).await;
    assert_eq!(fetched, updated);

    let webhook =
        create(&app, "webhooks", json!({"subscriptions": ["event_message"], "url": "https://a.example/"})).await;
    let wid = webhook["id"].as_str().unwrap();
    let (status, updated) =
        app.post(&format!("/v1/webhooks/update?id={wid}"), json!({"method": "GET", "url": {}})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["method"], "GET");
    assert_eq!(updated["url"], "https://a.example/");
    assert_eq!(updated["subscriptions"], json!(["event_message"]));

    let prompt = create(&app, "prompts", json!({"content": "hi", "context_endpoint": "https://ctx.example/"})).await;
    let pid = prompt["id"].as_str().unwrap();
    let (_, updated) = app.post(&format!("/v1/prompts/update?id={pid}"), json!({"context_endpoint": null})).await;
    assert_eq!(updated["context_endpoint"], Value::Null);
    assert_eq!(updated["content"], "hi");
    // A field that is not nullable cannot be cleared.
    let (status, body) = app.post(&format!("/v1/prompts/update?id={pid}"), json!({"content": null})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.content"]);
}

async fn a_type_change_is_validated_as_a_new_value(app: TestApp) {
    let voice = create(&app, "voices", json!({"type": "voice_azure", "voice_name": "x", "pitch": 3})).await;
    let id = voice["id"].as_str().unwrap();
    let (status, body) = app.post(&format!("/v1/voices/update?id={id}"), json!({"type": "voice_rime"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_locs(&body), ["body.speaker"]);
    let (_, unchanged) = app.get(&format!("/v1/voices?id={id}")).await;
    assert_eq!(unchanged, voice);

    let (status, changed) =
        app.post(&format!("/v1/voices/update?id={id}"), json!({"type": "voice_rime", "speaker": "s"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(changed["type"], "voice_rime");
    assert!(changed.get("pitch").is_none(), "no field of the old type survives: {changed}");
}

async fn secrets_are_masked_sealed_and_kept_when_sent_back(app: TestApp) {
    let token = "twilio-token-5678";
    let created = create(
        &app,
        "account_connections",
        json!({"type": "account_connection_twilio",
               "credentials": {"twilio_account_sid": "AC1", "twilio_auth_token": token}}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["credentials"]["twilio_auth_token"], "********5678");

    // The database holds neither the token nor anything that reveals it.
    let raw: (String, Vec<u8>) = raw_document(&app, "account_connections", &id).await;
    assert!(!raw.0.contains(token), "body holds the secret: {}", raw.0);
    assert!(!String::from_utf8_lossy(&raw.1).contains(token));

    // Sending the mask back keeps the stored secret.
    let (status, _) = app
        .post(
            &format!("/v1/account_connections/update?id={id}"),
            json!({"type": "account_connection_twilio",
                   "credentials": {"twilio_account_sid": "AC2", "twilio_auth_token": "********5678"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored_secret(&app, &id).await, token);

    // A new value replaces it.
    let (_, updated) = app
        .post(
            &format!("/v1/account_connections/update?id={id}"),
            json!({"type": "account_connection_twilio",
                   "credentials": {"twilio_account_sid": "AC2", "twilio_auth_token": "brand-new-9999"}}),
        )
        .await;
    assert_eq!(updated["credentials"]["twilio_auth_token"], "********9999");
    assert_eq!(updated["credentials"]["twilio_account_sid"], "AC2");
    assert_eq!(stored_secret(&app, &id).await, "brand-new-9999");
}

async fn raw_document(app: &TestApp, table: &str, id: &str) -> (String, Vec<u8>) {
    let id = uuid::Uuid::parse_str(id).unwrap();
    let mut handle = app.store().read().await.unwrap();
    let sql = format!("SELECT CAST(body AS TEXT), sealed FROM {table} WHERE id = $1");
    match handle.conn() {
        vocode_server::store::DbConn::Pg(c) => sqlx::query_as(&sql).bind(id).fetch_one(&mut *c).await.unwrap(),
        vocode_server::store::DbConn::Lite(c) => sqlx::query_as(&sql).bind(id).fetch_one(&mut *c).await.unwrap(),
    }
}

async fn stored_secret(app: &TestApp, id: &str) -> String {
    use vocode_server::domain::documents::ACCOUNT_CONNECTIONS;
    let mut handle = app.store().read().await.unwrap();
    let user = app_user(app).await;
    let record = vocode_server::store::records::get(
        handle.conn(),
        ACCOUNT_CONNECTIONS.table,
        user,
        uuid::Uuid::parse_str(id).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let clear = vocode_server::domain::documents::unseal(
        ACCOUNT_CONNECTIONS.table,
        &record.kind,
        record.body.0.clone(),
        record.sealed.as_deref(),
        &app.state.secrets,
    )
    .unwrap();
    clear["credentials"]["twilio_auth_token"].as_str().unwrap().to_owned()
}

async fn app_user(app: &TestApp) -> uuid::Uuid {
    let (_, prompt) = app.post("/v1/prompts/create", json!({})).await;
    uuid::Uuid::parse_str(prompt["user_id"].as_str().unwrap()).unwrap()
}

async fn external_action_secret_is_generated_and_shown_once(app: TestApp) {
    let config = json!({"name": "Book", "description": "Book a meeting", "url": "https://example.com/booking",
                        "input_schema": {"type": "object", "properties": {"length": {"type": "string", "enum": ["30m", "1hr"]}}},
                        "speak_on_send": true, "speak_on_receive": true});
    let (status, created) = app.post("/v1/actions/create", json!({"type": "action_external", "config": config})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let secret = created["config"]["signature_secret"].as_str().unwrap().to_owned();
    assert!(!secret.starts_with("****"), "revealed on create");
    assert_eq!(created["config"]["processing_mode"], "muted");
    assert_eq!(created["config"]["input_schema"]["properties"]["length"]["enum"], json!(["30m", "1hr"]));
    let id = created["id"].as_str().unwrap();
    let (_, fetched) = app.get(&format!("/v1/actions?id={id}")).await;
    assert_eq!(fetched["config"]["signature_secret"], json!(format!("********{}", &secret[secret.len() - 4..])));

    let mut own = config.clone();
    own["signature_secret"] = json!("my-own-secret-0000");
    let (_, mine) = app.post("/v1/actions/create", json!({"type": "action_external", "config": own})).await;
    assert_eq!(mine["config"]["signature_secret"], "********0000");

    let mut bad = config.clone();
    bad["url"] = json!("file:///etc/passwd");
    let (status, body) = app.post("/v1/actions/create", json!({"type": "action_external", "config": bad})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.config.url"]);
}

async fn prompt_templates_inline_or_by_id(app: TestApp) {
    let template_id = uuid::Uuid::new_v4().to_string();
    let created = create(
        &app,
        "prompts",
        json!({"content": "You are talking to ${name}",
               "prompt_template": {"id": template_id, "user_id": uuid::Uuid::new_v4(), "label": "greeting",
                                   "required_context_keys": ["name"]}}),
    )
    .await;
    assert_eq!(created["prompt_template"]["id"], template_id);
    assert_eq!(created["prompt_template"]["user_id"], created["user_id"], "owned by the caller");
    assert_eq!(created["prompt_template"]["required_context_keys"], json!(["name"]));
    let (_, page) = app.get("/v1/prompts/list").await;
    assert_eq!(page["items"][0]["prompt_template"], json!(template_id), "lists carry the id");

    let by_id = create(&app, "prompts", json!({"content": "again", "prompt_template": template_id})).await;
    assert_eq!(by_id["prompt_template"]["label"], "greeting");

    let missing = uuid::Uuid::new_v4();
    let (status, body) = app.post("/v1/prompts/create", json!({"prompt_template": missing})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.prompt_template"]);

    let (_, other_key) = app.new_user("template-thief").await;
    let (status, body) = app.post_as(&other_key, "/v1/prompts/create", json!({"prompt_template": template_id})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = app
        .post_as(
            &other_key,
            "/v1/prompts/create",
            json!({"prompt_template": {"id": template_id, "user_id": template_id, "label": "mine", "required_context_keys": []}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "another user's template id cannot be taken over");
    let (_, still) = app.get(&format!("/v1/prompts?id={}", by_id["id"].as_str().unwrap())).await;
    assert_eq!(still["prompt_template"]["label"], "greeting");
}

async fn lists_page_sort_and_count(app: TestApp) {
    let mut ids = Vec::new();
    for i in 0..7 {
        let (_, w) = app
            .post("/v1/webhooks/create", json!({"subscriptions": [], "url": format!("https://h{i}.example/")}))
            .await;
        ids.push(w["id"].as_str().unwrap().to_owned());
    }
    let (status, page) = app.get("/v1/webhooks/list?page=2&size=3").await;
    assert_eq!(status, StatusCode::OK);
    let got: Vec<&str> = page["items"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids[3..6].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!((page["page"].clone(), page["size"].clone()), (json!(2), json!(3)));
    assert_eq!(page["has_more"], true);
    assert_eq!(page["total"], 7);
    assert_eq!(page["total_is_estimated"], false);

    let (_, last) = app.get("/v1/webhooks/list?page=3&size=3").await;
    assert_eq!(last["items"].as_array().unwrap().len(), 1);
    assert_eq!(last["has_more"], false);
    let (_, beyond) = app.get("/v1/webhooks/list?page=99&size=3").await;
    assert_eq!(beyond["items"], json!([]));

    let (_, desc) = app.get("/v1/webhooks/list?sort_column=created_at&sort_desc=true&size=2").await;
    assert_eq!(desc["items"][0]["id"], json!(ids[6]));
    // Updating one moves it to the end of the updated_at order.
    app.post(&format!("/v1/webhooks/update?id={}", ids[0]), json!({"method": "GET"})).await;
    let (_, by_update) = app.get("/v1/webhooks/list?sort_column=updated_at&sort_desc=true&size=1").await;
    assert_eq!(by_update["items"][0]["id"], json!(ids[0]));
    let (_, by_id) = app.get("/v1/webhooks/list?sort_column=id&size=100").await;
    assert_eq!(by_id["items"].as_array().unwrap().len(), 7);

    for bad in
        ["size=101", "size=0", "page=0", "page=-1", "sort_column=url", "sort_desc=perhaps", "page=abc", "size=1e3"]
    {
        let (status, body) = app.get(&format!("/v1/webhooks/list?{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        let param = bad.split('=').next().unwrap();
        assert_eq!(error_locs(&body), [format!("query.{param}")], "{bad}");
    }
}

async fn bad_input_is_refused_and_changes_nothing(app: TestApp) {
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("voices", json!({"voice_name": "x"}), "body", "union_tag_not_found"),
        ("voices", json!({"type": "voice_galactic"}), "body", "union_tag_invalid"),
        ("voices", json!({"type": "voice_azure", "voice_name": ["x"]}), "body.voice_name", "string_type"),
        ("voices", json!({"type": "voice_azure", "voice_name": "x", "pitch": "high"}), "body.pitch", "int_parsing"),
        ("voices", json!({"type": "voice_vocode", "voice_id": "jane"}), "body.voice_id", "literal_error"),
        ("voices", json!([1, 2]), "body", "model_attributes_type"),
        ("actions", json!({"type": "action_transfer_call", "config": {}}), "body.config.phone_number", "missing"),
        (
            "actions",
            json!({"type": "action_end_conversation", "action_trigger": {"type": "action_trigger_phrase_based"}}),
            "body.action_trigger.config",
            "missing",
        ),
        (
            "webhooks",
            json!({"subscriptions": ["event_everything"], "url": "https://x.example"}),
            "body.subscriptions.0",
            "enum",
        ),
        ("webhooks", json!({"subscriptions": [], "url": "https://x.example", "method": "PUT"}), "body.method", "enum"),
        ("webhooks", json!({"subscriptions": [], "url": "ftp://x.example"}), "body.url", "url_parsing"),
        ("webhooks", json!({"subscriptions": []}), "body.url", "missing"),
        (
            "account_connections",
            json!({"type": "account_connection_twilio", "credentials": {"twilio_account_sid": "AC1"}}),
            "body.credentials.twilio_auth_token",
            "missing",
        ),
        (
            "account_connections",
            json!({"type": "account_connection_twilio", "credentials": {"twilio_account_sid": "AC1", "twilio_auth_token": "t"}, "steering_pool": ["12ab"]}),
            "body.steering_pool.0",
            "phone_number",
        ),
        ("vector_databases", json!({"type": "vector_database_pinecone", "index": "i"}), "body.api_key", "missing"),
        (
            "prompts",
            json!({"collect_fields": [{"field_type": "field_type_phone", "label": "l", "name": "n"}]}),
            "body.collect_fields.0.field_type",
            "literal_error",
        ),
        ("prompts", json!({"prompt_template": "not-a-uuid"}), "body.prompt_template", "uuid_parsing"),
    ];
    for (path, body, loc, kind) in cases {
        let (status, answer) = app.post(&format!("/v1/{path}/create"), body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {body}: {answer}");
        assert!(error_locs(&answer).contains(&loc.to_owned()), "{path} {body}: {answer}");
        assert!(
            answer["detail"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["type"] == kind && i["msg"].as_str().is_some_and(|m| !m.is_empty())),
            "{path} {body}: expected {kind} in {answer}"
        );
    }
    for path in ["voices", "actions", "webhooks", "account_connections", "vector_databases", "prompts"] {
        assert_eq!(count(&app, path).await, 0, "{path}: a refused create wrote nothing");
    }

    let (status, body) = app.post_raw("/v1/prompts/create", Some("application/json"), "{\"content\": ").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["type"], "json_invalid");
    let (status, body) = app.post_raw("/v1/prompts/create", Some("text/plain"), "{}").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("application/json"));
    let (status, body) = app.post_raw("/v1/prompts/create", Some("application/json"), "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body"]);
    let huge = format!("{{\"content\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    // (A fresh client: the server answers 413 before reading the body and closes the connection.)
    let res = reqwest::Client::new()
        .post(format!("{}/v1/prompts/create", app.base))
        .bearer_auth(&app.key)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let (status, body) = read(res).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["detail"].as_str().unwrap().contains("larger"));
    assert_eq!(count(&app, "prompts").await, 0);

    for path in ["/v1/prompts?id=42", "/v1/prompts?id=", "/v1/prompts", "/v1/voices?id=%27%20OR%201%3D1--"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_eq!(error_locs(&body), ["query.id"], "{path}");
    }
    let (status, body) = app.get(&format!("/v1/prompts?id={}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().starts_with("Prompt "));
    let (status, body) =
        app.post(&format!("/v1/voices/update?id={}", uuid::Uuid::new_v4()), json!({"type": "voice_azure"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = app.get("/v1/nothing-here").await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, json!({"detail": "Not Found"})));
    let res = app.request(reqwest::Method::DELETE, "/v1/prompts/list", Some(&app.key), None).await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(read(res).await.1, json!({"detail": "Method Not Allowed"}));
}

async fn another_user_sees_nothing(app: TestApp) {
    let (_, other) = app.new_user("mallory").await;
    let made = [
        ("prompts", create(&app, "prompts", json!({"content": "secret plan"})).await, json!({"content": "x"})),
        ("voices", create(&app, "voices", json!({"type": "voice_azure", "voice_name": "v"})).await, json!({"type": "voice_azure"})),
        ("webhooks", create(&app, "webhooks", json!({"subscriptions": [], "url": "https://a.example"})).await, json!({})),
        ("vector_databases", create(&app, "vector_databases", json!({"type": "vector_database_pinecone", "index": "i", "api_key": "k-123456789", "api_environment": "e"})).await, json!({"type": "vector_database_pinecone"})),
        ("account_connections", create(&app, "account_connections", json!({"type": "account_connection_openai", "credentials": {"openai_api_key": "sk-123456789"}})).await, json!({"type": "account_connection_openai"})),
        ("actions", create(&app, "actions", json!({"type": "action_dtmf"})).await, json!({"type": "action_dtmf"})),
    ];
    for (path, object, update) in &made {
        let id = object["id"].as_str().unwrap();
        let (status, _) = app.get_as(&other, &format!("/v1/{path}?id={id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} get");
        let (status, _) = app.post_as(&other, &format!("/v1/{path}/update?id={id}"), update.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} update");
        let (status, page) = app.get_as(&other, &format!("/v1/{path}/list")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((page["items"].clone(), page["total"].clone()), (json!([]), json!(0)), "{path} list");
        let (_, mine) = app.get(&format!("/v1/{path}?id={id}")).await;
        assert_eq!(&mine, object, "{path}: unchanged by the other user");
    }
    let conn = made[4].1["id"].as_str().unwrap();
    let (status, _) = app
        .post_as(
            &other,
            &format!("/v1/account_connections/add_to_steering_pool?id={conn}"),
            json!({"phone_number": "14155550100"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn steering_pool_keeps_numbers(app: TestApp) {
    let conn = create(
        &app,
        "account_connections",
        json!({"type": "account_connection_twilio", "credentials": {"twilio_account_sid": "AC1", "twilio_auth_token": "t-123456789"},
               "steering_pool": ["+1 (415) 555-0100"]}),
    )
    .await;
    assert_eq!(conn["steering_pool"], json!(["14155550100"]));
    let id = conn["id"].as_str().unwrap();
    let add_path = format!("/v1/account_connections/add_to_steering_pool?id={id}");
    let add = |n: &'static str| app.post(&add_path, json!({"phone_number": n}));
    let (status, after) = add("+1 415 555 0101").await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["steering_pool"], json!(["14155550100", "14155550101"]));
    assert_eq!(after["credentials"]["twilio_auth_token"], "********6789");
    let (_, again) = add("14155550101").await;
    assert_eq!(again["steering_pool"], json!(["14155550100", "14155550101"]), "adding twice keeps one");
    let (status, body) = add("not a number").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.phone_number"]);

    let (status, after) = app
        .post(
            &format!("/v1/account_connections/remove_from_steering_pool?id={id}"),
            json!({"phone_number": "14155550100"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after["steering_pool"], json!(["14155550101"]));
    let (status, body) = app
        .post(
            &format!("/v1/account_connections/remove_from_steering_pool?id={id}"),
            json!({"phone_number": "14155550100"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("not in"));

    // Without a number (no body at all, as the SDK sends it) one is bought on the account for the
    // pool (here, from the sandbox carrier's Twilio).
    let res = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/account_connections/add_to_steering_pool?id={id}"),
            Some(&app.key),
            None,
        )
        .await;
    let (status, body) = read(res).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pool = body["steering_pool"].as_array().unwrap();
    assert_eq!(pool.len(), 2, "{body}");
    assert_eq!(pool[0], "14155550101");
    assert!(pool[1].as_str().unwrap().starts_with('1') && pool[1] != "14155550101", "a bought number: {body}");

    let openai = create(
        &app,
        "account_connections",
        json!({"type": "account_connection_openai", "credentials": {"openai_api_key": "sk-1234567890"}}),
    )
    .await;
    let (status, _) = app
        .post(
            &format!("/v1/account_connections/add_to_steering_pool?id={}", openai["id"].as_str().unwrap()),
            json!({"phone_number": "14155550100"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, unchanged) = app.get(&format!("/v1/account_connections?id={id}")).await;
    assert_eq!(unchanged["steering_pool"], body["steering_pool"], "unchanged by the refusal");
}

async fn strings_full_of_metacharacters_are_stored_verbatim(app: TestApp) {
    let nasty = "'; DROP TABLE prompts; -- $(rm -rf /) `id` \" \\ ☎ ${name} %00 \u{202e}";
    let prompt = create(&app, "prompts", json!({"content": nasty})).await;
    assert_eq!(prompt["content"], nasty);
    let (_, page) = app.get("/v1/prompts/list").await;
    assert_eq!(page["items"][0]["content"], nasty);
    // NUL, which neither database's text can hold, is refused with a clear 422, not a 500.
    let (status, body) = app.post("/v1/prompts/create", json!({"content": "a\u{0}b"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.content"]);
    let (status, body) = app
        .post(
            "/v1/actions/create",
            json!({"type": "action_external", "config": {"name": "n", "description": "d",
               "url": "https://x.example", "speak_on_send": true, "speak_on_receive": true,
               "input_schema": {"type": "object", "bad\u{0}key": 1}}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&body), ["body.config.input_schema.bad\u{0}key"]);
    let (status, _) = app.get("/v1/prompts/list?sort_column=%00").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(count(&app, "prompts").await, 1);
}

#[tokio::test]
async fn health_ready_request_ids_and_the_document() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let res = app.request(reqwest::Method::GET, "/health", None, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let request_id = res.headers().get("x-request-id").expect("a request id").to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 36);
    let (status, ready) = read(app.request(reqwest::Method::GET, "/ready", None, None).await).await;
    assert_eq!((status, ready["status"].clone()), (StatusCode::OK, json!("ready")));
    let (status, doc) = read(app.request(reqwest::Method::GET, "/openapi.json", None, None).await).await;
    assert_eq!(status, StatusCode::OK);
    let file: Value = serde_norway::from_str(OPENAPI_YAML).unwrap();
    assert_eq!(doc, file, "/openapi.json serves openapi.yaml");
    // A request id the client sends is kept.
    let res =
        app.client.get(format!("{}/health", app.base)).header("x-request-id", "trace-me-123").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-123");
    // Ready turns 503 when the database is gone.
    app.store().close().await;
    let (status, body) = read(app.request(reqwest::Method::GET, "/ready", None, None).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["detail"].as_str().unwrap().contains("database"));
}

/// Postgres's `jsonb` gives numbers back in plain decimal notation (the largest double as 309
/// digits): whatever a create accepts must read back, alone and in the list, or one request
/// poisons a tenant's list. Numbers no double can hold are refused before anything is written.
async fn numbers_at_the_limits_of_a_double_are_stored_and_read_back(app: TestApp) {
    let extremes = [
        "1.7976931348623157e308",
        "-1.7976931348623157e308",
        "2.2250738585072014e-308",
        "5e-324",
        "-4.9406564584124654e-324",
        "123456789012345678901234567890",
        "18446744073709551615",
        "-9223372036854775808",
        "1e-7",
        "0.1",
    ];
    let mut created = Vec::new();
    for number in extremes {
        let body = format!(r#"{{"type": "voice_play_ht", "voice_id": "v", "speed": {number}}}"#);
        let (status, voice) = app.post_raw("/v1/voices/create", Some("application/json"), body).await;
        assert_eq!(status, StatusCode::OK, "{number}: {voice}");
        let sent: Value = serde_json::from_str(number).unwrap();
        assert_eq!(voice["speed"].as_f64(), sent.as_f64(), "{number} as created");
        let (status, fetched) = app.get(&format!("/v1/voices?id={}", voice["id"].as_str().unwrap())).await;
        assert_eq!(status, StatusCode::OK, "{number} read back: {fetched}");
        assert_eq!(fetched["speed"].as_f64(), sent.as_f64(), "{number} as read back");
        created.push(voice);
    }
    let agent = json!({"prompt": {"content": "hi"}, "voice": created[0]["id"], "llm_temperature": 5e-324});
    let (status, agent) = app.post("/v1/agents/create", agent).await;
    assert_eq!(status, StatusCode::OK, "{agent}");
    let (status, fetched) = app.get(&format!("/v1/agents?id={}", agent["id"].as_str().unwrap())).await;
    assert_eq!((status, fetched["llm_temperature"].as_f64()), (StatusCode::OK, Some(5e-324)));

    let (status, page) = app.get("/v1/voices/list?size=100").await;
    assert_eq!(status, StatusCode::OK, "the list reads back: {page}");
    assert_eq!(page["total"], json!(extremes.len()));

    // Past the largest double, written as an exponent or digit by digit.
    let too_large = ["1e309".to_owned(), "-2e400".to_owned(), format!("17976931348623159{}", "0".repeat(292))];
    for number in &too_large {
        let body = format!(r#"{{"type": "voice_play_ht", "voice_id": "v", "speed": {number}}}"#);
        let (status, answer) = app.post_raw("/v1/voices/create", Some("application/json"), body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{number}: {answer}");
        assert_eq!(answer["detail"][0]["type"], "json_invalid", "{answer}");
    }
    assert_eq!(count(&app, "voices").await, extremes.len() as i64, "nothing was written");
}
