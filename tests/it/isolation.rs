//! Tenants kept apart, exhaustively: a second user's key walks every one of the upstream spec's
//! 43 operations against the first user's objects — their ids in query strings, in request
//! bodies, their phone numbers — and each attempt is refused with 404 or 422 (or, for lists, usage
//! and metrics, shows nothing of the first user), and the first user's objects are unchanged
//! afterwards. The walk fails if an operation of the spec is missing from it.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use vocode_server::config::{CarrierMode, TelephonyArgs};

use crate::support::{Backend, FakeTwilio, Options, TestApp, UPSTREAM_OPENAPI};

const A_NUMBER: &str = "14155550100";
const B_NUMBER: &str = "14155550199";

/// What the first user owns.
struct Owned {
    prompt: String,
    voice: String,
    webhook: String,
    vector_database: String,
    connection: String,
    openai: String,
    action: String,
    agent: String,
    call: String,
}

async fn made(app: &TestApp, key: &str, path: &str, body: Value) -> String {
    let (status, made) = app.post_as(key, path, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{path} {body}: {made}");
    made["id"].as_str().unwrap().to_owned()
}

async fn twilio_connection(app: &TestApp, key: &str, twilio: &FakeTwilio) -> String {
    made(
        app,
        key,
        "/v1/account_connections/create",
        json!({"type": "account_connection_twilio",
               "credentials": {"twilio_account_sid": twilio.state.account_sid, "twilio_auth_token": twilio.state.auth_token}}),
    )
    .await
}

async fn own_everything(app: &TestApp, twilio: &FakeTwilio) -> Owned {
    let key = app.key.clone();
    let prompt = made(app, &key, "/v1/prompts/create", json!({"content": "A's secret prompt"})).await;
    let voice = made(app, &key, "/v1/voices/create", json!({"type": "voice_vocode", "voice_id": "joe"})).await;
    let webhook = made(
        app,
        &key,
        "/v1/webhooks/create",
        json!({"subscriptions": ["event_phone_call_ended"], "url": "https://a.example/hook"}),
    )
    .await;
    let vector_database = made(
        app,
        &key,
        "/v1/vector_databases/create",
        json!({"type": "vector_database_pinecone", "index": "a-index", "api_key": "pc-a-secret-1234", "api_environment": "us-east1"}),
    )
    .await;
    let connection = twilio_connection(app, &key, twilio).await;
    let openai = made(
        app,
        &key,
        "/v1/account_connections/create",
        json!({"type": "account_connection_openai", "credentials": {"openai_api_key": "sk-a-secret-c0de"}}),
    )
    .await;
    let action = made(
        app,
        &key,
        "/v1/actions/create",
        json!({"type": "action_transfer_call", "config": {"phone_number": "11234567890"}}),
    )
    .await;
    let agent = made(
        app,
        &key,
        "/v1/agents/create",
        json!({"prompt": prompt, "voice": voice, "webhook": webhook, "vector_database": vector_database,
               "openai_account_connection": openai, "actions": [action]}),
    )
    .await;
    twilio.own(&format!("+{A_NUMBER}"));
    let (status, number) = app
        .post(
            "/v1/numbers/link",
            json!({"phone_number": A_NUMBER, "telephony_account_connection": connection, "inbound_agent": agent}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{number}");
    let call = made(
        app,
        &key,
        "/v1/calls/create",
        json!({"from_number": A_NUMBER, "to_number": "16505550123", "agent": agent}),
    )
    .await;
    Owned { prompt, voice, webhook, vector_database, connection, openai, action, agent, call }
}

/// Everything the first user can read of their own.
async fn snapshot(app: &TestApp, a: &Owned) -> Vec<Value> {
    let mut seen = Vec::new();
    for path in [
        format!("/v1/prompts?id={}", a.prompt),
        format!("/v1/voices?id={}", a.voice),
        format!("/v1/webhooks?id={}", a.webhook),
        format!("/v1/vector_databases?id={}", a.vector_database),
        format!("/v1/account_connections?id={}", a.connection),
        format!("/v1/account_connections?id={}", a.openai),
        format!("/v1/actions?id={}", a.action),
        format!("/v1/agents?id={}", a.agent),
        format!("/v1/calls?id={}", a.call),
        format!("/v1/numbers?phone_number={A_NUMBER}"),
        "/v1/usage".to_owned(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        seen.push(body);
    }
    for list in [
        "prompts",
        "voices",
        "webhooks",
        "vector_databases",
        "account_connections",
        "actions",
        "agents",
        "calls",
        "numbers",
    ] {
        let (status, page) = app.get(&format!("/v1/{list}/list?size=100")).await;
        assert_eq!(status, StatusCode::OK);
        seen.push(page);
    }
    seen
}

/// The second user's walk: every attempt, and the operations it covered.
struct Walk<'a> {
    app: &'a TestApp,
    key: String,
    /// Strings of the first user's that must never appear in an answer to the second.
    theirs: Vec<String>,
    covered: BTreeSet<String>,
}

impl Walk<'_> {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let res = self.app.request(method, path, Some(&self.key), body.as_ref()).await;
        let status = res.status();
        (status, res.text().await.unwrap())
    }

    fn leaks(&self, text: &str) -> Option<String> {
        self.theirs.iter().find(|t| text.contains(t.as_str())).cloned()
    }

    /// An attempt on the first user's objects: refused with 404 or 422, giving nothing away.
    async fn refused(&mut self, op: &str, method: Method, path: &str, body: Option<Value>) {
        let (status, text) = self.send(method.clone(), path, body.clone()).await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{op}: {method} {path} {body:?} → {status} {text}"
        );
        let detail: Value = serde_json::from_str(&text).unwrap();
        assert!(detail.get("detail").is_some(), "{op}: {text}");
        if let Some(leak) = self.leaks(&text) {
            // An id the caller sent may be named back (FastAPI-style `input`); nothing else may.
            assert!(
                path.contains(&leak) || body.as_ref().is_some_and(|b| b.to_string().contains(&leak)),
                "{op}: {leak} in {text}"
            );
        }
        self.covered.insert(op.to_owned());
    }

    /// An operation that is the second user's own (a list, their usage, a create): it succeeds
    /// and shows nothing of the first user.
    async fn own(&mut self, op: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, text) = self.send(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{op}: {method} {path} → {text}");
        assert_eq!(self.leaks(&text), None, "{op}: {path} shows the other user's data: {text}");
        self.covered.insert(op.to_owned());
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

async fn tenants_are_kept_apart_on_every_operation(backend: Backend) {
    let twilio = FakeTwilio::start().await;
    let telephony = TelephonyArgs {
        carrier_mode: CarrierMode::Live,
        twilio_api_base_url: Some(twilio.base.clone()),
        carrier_timeout_secs: 2,
        ..TelephonyArgs::default()
    };
    let Some(app) = TestApp::spawn_with(backend, Options { telephony, ..Options::default() }).await else { return };
    let a = own_everything(&app, &twilio).await;
    let (a_user, _) = {
        let (_, usage) = app.get("/v1/usage").await;
        (usage["user_id"].as_str().unwrap().to_owned(), ())
    };
    let (_, b_key) = app.new_user("second").await;
    // The second user's own connection, number and agent, to aim at the first user's things from.
    let b_connection = twilio_connection(&app, &b_key, &twilio).await;
    twilio.own(&format!("+{B_NUMBER}"));
    let (status, linked) = app
        .post_as(
            &b_key,
            "/v1/numbers/link",
            json!({"phone_number": B_NUMBER, "telephony_account_connection": b_connection}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{linked}");
    let b_agent = made(
        &app,
        &b_key,
        "/v1/agents/create",
        json!({"prompt": {"content": "B"}, "voice": {"type": "voice_vocode", "voice_id": "joe"}}),
    )
    .await;

    let before = snapshot(&app, &a).await;
    let calls_at_carrier = twilio.calls().len();
    let mut walk = Walk {
        app: &app,
        key: b_key.clone(),
        theirs: vec![
            a_user.clone(),
            a.prompt.clone(),
            a.voice.clone(),
            a.webhook.clone(),
            a.vector_database.clone(),
            a.connection.clone(),
            a.openai.clone(),
            a.action.clone(),
            a.agent.clone(),
            a.call.clone(),
            A_NUMBER.to_owned(),
            "A's secret prompt".to_owned(),
            "a.example".to_owned(),
        ],
        covered: BTreeSet::new(),
    };
    use Method as M;

    // The six kinds of document (path, name): get and update by id; list and create are the
    // second user's own.
    let documents = [
        ("prompts", "prompt", &a.prompt, json!({"content": "taken over"}), json!({"content": "B's own"})),
        (
            "voices",
            "voice",
            &a.voice,
            json!({"type": "voice_vocode", "voice_id": "joe"}),
            json!({"type": "voice_rime", "speaker": "s"}),
        ),
        (
            "webhooks",
            "webhook",
            &a.webhook,
            json!({"url": "https://b.example/steal"}),
            json!({"subscriptions": [], "url": "https://b.example/own"}),
        ),
        (
            "vector_databases",
            "vector_database",
            &a.vector_database,
            json!({"type": "vector_database_pinecone", "index": "stolen"}),
            json!({"type": "vector_database_pinecone", "index": "b", "api_key": "pc-b-1234567", "api_environment": "e"}),
        ),
        (
            "account_connections",
            "account_connection",
            &a.connection,
            json!({"type": "account_connection_twilio", "credentials": {"twilio_account_sid": "ACstolen", "twilio_auth_token": "stolen-123"}}),
            json!({"type": "account_connection_openai", "credentials": {"openai_api_key": "sk-b-own-1234"}}),
        ),
        (
            "actions",
            "action",
            &a.action,
            json!({"type": "action_transfer_call", "config": {"phone_number": "19998887777"}}),
            json!({"type": "action_end_conversation"}),
        ),
    ];
    for (path, name, id, update_body, create_body) in documents {
        walk.refused(&format!("get_{name}"), M::GET, &format!("/v1/{path}?id={id}"), None).await;
        walk.refused(&format!("update_{name}"), M::POST, &format!("/v1/{path}/update?id={id}"), Some(update_body))
            .await;
        walk.own(&format!("list_{path}"), M::GET, &format!("/v1/{path}/list?size=100"), None).await;
        walk.own(&format!("create_{name}"), M::POST, &format!("/v1/{path}/create"), Some(create_body)).await;
    }
    // The OpenAI connection too, and the steering pool of the first user's Twilio connection.
    walk.refused("get_account_connection", M::GET, &format!("/v1/account_connections?id={}", a.openai), None).await;
    walk.refused(
        "add_to_steering_pool",
        M::POST,
        &format!("/v1/account_connections/add_to_steering_pool?id={}", a.connection),
        Some(json!({"phone_number": B_NUMBER})),
    )
    .await;
    walk.refused(
        "remove_from_steering_pool",
        M::POST,
        &format!("/v1/account_connections/remove_from_steering_pool?id={}", a.connection),
        Some(json!({"phone_number": A_NUMBER})),
    )
    .await;

    // Agents: by id, and the first user's objects referenced from the second user's bodies.
    walk.refused("get_agent", M::GET, &format!("/v1/agents?id={}", a.agent), None).await;
    walk.refused(
        "update_agent",
        M::POST,
        &format!("/v1/agents/update?id={}", a.agent),
        Some(json!({"language": "es"})),
    )
    .await;
    let voice = json!({"type": "voice_vocode", "voice_id": "joe"});
    for (field, value) in [
        ("prompt", json!(a.prompt)),
        ("voice", json!(a.voice)),
        ("webhook", json!(a.webhook)),
        ("vector_database", json!(a.vector_database)),
        ("openai_account_connection", json!(a.openai)),
        ("actions", json!([a.action])),
    ] {
        let mut body = json!({"prompt": {"content": "B"}, "voice": voice});
        body[field] = value.clone();
        walk.refused("create_agent", M::POST, "/v1/agents/create", Some(body)).await;
        walk.refused("update_agent", M::POST, &format!("/v1/agents/update?id={b_agent}"), Some(json!({field: value})))
            .await;
    }
    let agents = walk.own("list_agents", M::GET, "/v1/agents/list?size=100", None).await;
    assert_eq!(agents["total"], 1, "only the second user's own agent: nothing was created by the refused attempts");

    // Numbers: the first user's number by phone number, and their connection and agent from ours.
    let a_number = format!("phone_number={A_NUMBER}");
    walk.refused("get_number", M::GET, &format!("/v1/numbers?{a_number}"), None).await;
    walk.refused(
        "update_number",
        M::POST,
        &format!("/v1/numbers/update?{a_number}"),
        Some(json!({"label": "mine now"})),
    )
    .await;
    walk.refused("cancel_number", M::POST, &format!("/v1/numbers/cancel?{a_number}"), None).await;
    walk.refused(
        "link_number",
        M::POST,
        "/v1/numbers/link",
        Some(json!({"phone_number": A_NUMBER, "telephony_account_connection": b_connection})),
    )
    .await;
    walk.refused(
        "link_number",
        M::POST,
        "/v1/numbers/link",
        Some(json!({"phone_number": "14155550177", "telephony_account_connection": a.connection})),
    )
    .await;
    walk.refused(
        "update_number",
        M::POST,
        &format!("/v1/numbers/update?phone_number={B_NUMBER}"),
        Some(json!({"inbound_agent": a.agent})),
    )
    .await;
    walk.refused(
        "buy_number",
        M::POST,
        "/v1/numbers/buy",
        Some(json!({"telephony_provider": "twilio", "telephony_account_connection": a.connection})),
    )
    .await;
    walk.refused(
        "buy_number",
        M::POST,
        "/v1/numbers/buy",
        Some(json!({"telephony_provider": "twilio", "telephony_account_connection": b_connection, "inbound_agent": a.agent})),
    )
    .await;
    let numbers = walk.own("list_numbers", M::GET, "/v1/numbers/list?size=100", None).await;
    assert_eq!(numbers["total"], 1);

    // Calls: the first user's call by id, their number and agent from the second user's call.
    let a_call = format!("id={}", a.call);
    walk.refused("get_call", M::GET, &format!("/v1/calls?{a_call}"), None).await;
    walk.refused("end_call", M::POST, &format!("/v1/calls/end?{a_call}"), None).await;
    walk.refused("get_recording", M::GET, &format!("/v1/calls/recording?{a_call}"), None).await;
    walk.refused(
        "create_call",
        M::POST,
        "/v1/calls/create",
        Some(json!({"from_number": A_NUMBER, "to_number": "16505550124", "agent": b_agent})),
    )
    .await;
    walk.refused(
        "create_call",
        M::POST,
        "/v1/calls/create",
        Some(json!({"from_number": B_NUMBER, "to_number": "16505550125", "agent": a.agent})),
    )
    .await;
    let calls = walk.own("list_calls", M::GET, "/v1/calls/list?size=100", None).await;
    assert_eq!(calls["total"], 0);
    assert_eq!(twilio.calls().len(), calls_at_carrier, "the refused creates placed no call");

    // Usage and metrics show nothing of the first user.
    let usage = walk.own("get_usage", M::GET, "/v1/usage", None).await;
    assert_ne!(usage["user_id"], json!(a_user));
    walk.own("metrics_metrics_get", M::GET, "/metrics", None).await;

    // Every operation of the spec was walked.
    let spec: Value = serde_json::from_str(UPSTREAM_OPENAPI).unwrap();
    let operations: BTreeSet<String> = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values().map(|op| op["operationId"].as_str().unwrap().to_owned()))
        .collect();
    let covered = walk.covered.clone();
    assert_eq!(operations.len(), 43);
    assert_eq!(
        operations.difference(&covered).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "operations the walk left out"
    );

    // And the first user's world is as it was.
    assert_eq!(snapshot(&app, &a).await, before);
    // The second user's creations are invisible to the first, too.
    for list in ["prompts", "voices", "webhooks", "vector_databases", "account_connections", "actions", "agents"] {
        let (_, mine) = app.get(&format!("/v1/{list}/list?size=100")).await;
        assert!(!mine.to_string().contains("b.example") && !mine.to_string().contains("B's own"), "{list}: {mine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_kept_apart_on_every_operation_sqlite() {
    tenants_are_kept_apart_on_every_operation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_kept_apart_on_every_operation_postgres() {
    tenants_are_kept_apart_on_every_operation(Backend::Postgres).await;
}
