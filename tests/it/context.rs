//! A call's context in its agent's prompt, and do-not-call detection, through the real server: the
//! sandbox carrier's simulated person talks with an agent whose model is the fake OpenAI, so what
//! the agent was told is the system message the fake receives. A fake context endpoint answers as
//! each test plans (a JSON object, an error, a hang). Inbound calls come from the fake Twilio.
//!
//! Shown here: `${name}` filled from the call's `context`, the context endpoint (asked with the
//! person's number) and an inbound number's `example_context`, with their precedence; a failing or
//! hanging endpoint that the call goes on without; a private endpoint refused without
//! `ALLOW_PRIVATE_TARGETS`; `collect_fields` as instructions; `required_context_keys` refused at
//! `calls/create` with a 422 naming them and nothing written; and `do_not_call_result` set from the
//! model's answer (true and false), and left null where no detection runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode as AxumStatus, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use reqwest::StatusCode;
use serde_json::{json, Value};
use vocode_server::config::{ConversationArgs, TelephonyArgs};

use crate::support::fake_openai::{FakeOpenAi, Received as ModelRequest, Script};
use crate::support::{
    eventually, live_telephony, on_both_backends, Backend, FakeTwilio, FakeVonage, Options, Receiver, TestApp,
    PUBLIC_KEY_PEM,
};

/// How the fake context endpoint answers at a path.
#[derive(Clone)]
enum Answer {
    Json(Value),
    Status(u16),
    /// Nothing, for a minute.
    Hang,
}

#[derive(Default)]
struct EndpointState {
    /// Each request: its path and its query.
    asked: Mutex<Vec<(String, HashMap<String, String>)>>,
    answers: Mutex<HashMap<String, Answer>>,
}

/// A user's context endpoint: a real HTTP server on a random port of 127.0.0.1.
struct ContextEndpoint {
    base: String,
    state: Arc<EndpointState>,
}

impl ContextEndpoint {
    async fn start() -> ContextEndpoint {
        let state = Arc::new(EndpointState::default());
        let router = Router::new().fallback(endpoint).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        ContextEndpoint { base, state }
    }

    /// The URL of `path`, which answers `answer`.
    fn at(&self, path: &str, answer: Answer) -> String {
        self.state.answers.lock().unwrap().insert(path.to_owned(), answer);
        format!("{}{path}", self.base)
    }

    /// The queries `path` was asked with.
    fn asked(&self, path: &str) -> Vec<HashMap<String, String>> {
        self.state.asked.lock().unwrap().iter().filter(|(p, _)| p == path).map(|(_, q)| q.clone()).collect()
    }
}

async fn endpoint(State(state): State<Arc<EndpointState>>, uri: Uri, RawQuery(query): RawQuery) -> Response {
    let query: HashMap<String, String> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    state.asked.lock().unwrap().push((uri.path().to_owned(), query));
    let answer = state.answers.lock().unwrap().get(uri.path()).cloned();
    match answer {
        Some(Answer::Json(body)) => Json(body).into_response(),
        Some(Answer::Status(status)) => (AxumStatus::from_u16(status).unwrap(), "it broke").into_response(),
        Some(Answer::Hang) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Json(json!({"name": "Too Late"})).into_response()
        }
        None => AxumStatus::NOT_FOUND.into_response(),
    }
}

struct World {
    app: TestApp,
    openai: FakeOpenAi,
    endpoint: ContextEndpoint,
    receiver: Receiver,
    /// A sandbox number of the default user's.
    from: String,
}

/// The sandbox carrier, its people sped up; the fake OpenAI as the model (speech-to-text and the
/// voice are the sandbox's stand-ins); private targets allowed or not.
async fn world_with(backend: Backend, allow_private_targets: bool) -> Option<World> {
    let openai = FakeOpenAi::start().await;
    let telephony = TelephonyArgs { sandbox_time_scale: 0.05, ..TelephonyArgs::default() };
    let conversation = ConversationArgs {
        openai_api_key: Some("sk-server".into()),
        openai_base_url: Some(openai.base.clone()),
        ..ConversationArgs::default()
    };
    let options = Options { telephony, conversation, ..Options::default() };
    let app = TestApp::spawn_with_serve(backend, options, |serve| serve.allow_private_targets = allow_private_targets)
        .await?;
    let (status, number) =
        app.post("/v1/numbers/buy", json!({"telephony_provider": "twilio", "area_code": "415"})).await;
    assert_eq!(status, StatusCode::OK, "{number}");
    let from = number["number"].as_str().unwrap().to_owned();
    Some(World { app, openai, endpoint: ContextEndpoint::start().await, receiver: Receiver::start().await, from })
}

async fn world(backend: Backend) -> Option<World> {
    world_with(backend, true).await
}

async fn guarded_world(backend: Backend) -> Option<World> {
    world_with(backend, false).await
}

/// Creates a call from the world's number to a sandbox person who answers, says a thing, hears the
/// answer, says goodbye and hangs up.
async fn call(w: &World, to: &str, agent: Value, extra: Value) -> String {
    let mut body = json!({"from_number": w.from, "to_number": to, "agent": agent});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, call) = w.app.post("/v1/calls/create", body).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    call["id"].as_str().unwrap().to_owned()
}

/// The model's requests whose system message contains `marker`.
fn asked_with(w: &World, marker: &str) -> Vec<ModelRequest> {
    w.openai
        .received()
        .into_iter()
        .filter(|r| r.body["messages"][0]["content"].as_str().is_some_and(|s| s.contains(marker)))
        .collect()
}

/// The system message of the first model request of the call whose prompt contains `marker`.
async fn system_prompt(w: &World, marker: &str) -> String {
    eventually(Duration::from_secs(20), || async {
        asked_with(w, marker).first().map(|r| r.body["messages"][0]["content"].as_str().unwrap().to_owned())
    })
    .await
}

async fn get(app: &TestApp, id: &str) -> Value {
    let (status, call) = app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    call
}

async fn ended(app: &TestApp, id: &str) -> Value {
    eventually(Duration::from_secs(30), || async {
        let call = get(app, id).await;
        matches!(call["status"].as_str(), Some("ended" | "error")).then_some(call)
    })
    .await
}

on_both_backends!(world =>
    placeholders_are_filled_from_the_calls_context_over_the_endpoints,
    a_failing_or_hanging_endpoint_leaves_the_call_with_the_context_it_has,
    required_context_keys_are_checked_at_create_and_nothing_is_written,
    do_not_call_detection_keeps_the_models_answer,
);

on_both_backends!(guarded_world => a_private_context_endpoint_is_refused_without_allow_private_targets);

async fn placeholders_are_filled_from_the_calls_context_over_the_endpoints(w: World) {
    let url = w.endpoint.at(
        "/crm",
        Answer::Json(json!({"name": "Kian (from the endpoint)", "topic": "the offer", "visits": 3, "gone": null})),
    );
    let agent = json!({
        "prompt": {
            "content": "[filled] Call ${name} about ${topic} (visit ${visits}).${gone}${unknown} Costs $5.",
            "context_endpoint": url,
            "collect_fields": [{"field_type": "field_type_email", "label": "Work email", "name": "email",
                                "description": "for the invoice"}],
        },
        "initial_message": "Hi.",
    });
    let id = call(&w, "14155550177", agent, json!({"context": {"name": "Ajay", "team": "unused"}})).await;
    let prompt = system_prompt(&w, "[filled]").await;
    // The call's own context wins over the endpoint's answer, which fills what the call lacks; what
    // nobody knows is left empty, and text that is not a placeholder stays as it is.
    let (filled, instructions) = prompt.split_once("\n\n").unwrap_or((&prompt, ""));
    assert_eq!(filled, "[filled] Call Ajay about the offer (visit 3). Costs $5.");
    assert!(instructions.starts_with("During the conversation, ask the person for"), "{prompt}");
    assert!(instructions.contains("- Work email (for the invoice): an email address"), "{prompt}");
    // The endpoint was asked once, about the person called, by number as calls show it.
    let asked = w.endpoint.asked("/crm");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["phone_number"], "14155550177");
    assert_eq!(get(&w.app, &id).await["to_number"], "14155550177");
    ended(&w.app, &id).await;
}

async fn a_failing_or_hanging_endpoint_leaves_the_call_with_the_context_it_has(w: World) {
    let failing = w.endpoint.at("/failing", Answer::Status(500));
    let hanging = w.endpoint.at("/hanging", Answer::Hang);
    let not_json = w.endpoint.at("/list", Answer::Json(json!(["name", "Nobody"])));
    let agent = |marker: &str, url: &str| {
        json!({"prompt": {"content": format!("[{marker}] Hello ${{name}}, from ${{city}}."), "context_endpoint": url},
               "initial_message": "Hi."})
    };
    let context = json!({"context": {"city": "Lyon"}});
    let started = std::time::Instant::now();
    let ids = [
        call(&w, "14155550171", agent("failing", &failing), context.clone()).await,
        call(&w, "14155550172", agent("hanging", &hanging), context.clone()).await,
        call(&w, "14155550173", agent("not json", &not_json), context).await,
    ];
    for marker in ["failing", "hanging", "not json"] {
        assert_eq!(system_prompt(&w, &format!("[{marker}]")).await, format!("[{marker}] Hello , from Lyon."));
    }
    for path in ["/failing", "/hanging", "/list"] {
        assert_eq!(w.endpoint.asked(path).len(), 1, "{path} was asked");
    }
    // The hanging endpoint held the call up for its bounded time only (2 s), not its minute.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    for id in &ids {
        let call = ended(&w.app, id).await;
        assert_eq!(call["stage"], "picked_up", "{call}");
        assert!(call["transcript"].as_str().unwrap().contains("HUMAN:"), "the call went on: {call}");
    }
}

async fn a_private_context_endpoint_is_refused_without_allow_private_targets(w: World) {
    let url = w.endpoint.at("/private", Answer::Json(json!({"name": "Should Not Be Asked"})));
    let agent = json!({"prompt": {"content": "[guarded] Hello ${name} from ${city}.", "context_endpoint": url},
                       "initial_message": "Hi."});
    let id = call(&w, "14155550174", agent, json!({"context": {"city": "Oslo"}})).await;
    assert_eq!(system_prompt(&w, "[guarded]").await, "[guarded] Hello  from Oslo.");
    assert!(w.endpoint.asked("/private").is_empty(), "a 127.0.0.1 endpoint is never sent to");
    ended(&w.app, &id).await;
}

/// A live Twilio number (the fake's) whose inbound agent's prompt has placeholders and a context
/// endpoint, and whose `example_context` fills some of them.
struct Inbound {
    app: TestApp,
    twilio: FakeTwilio,
    endpoint: ContextEndpoint,
}

async fn inbound(backend: Backend) -> Option<Inbound> {
    let twilio = FakeTwilio::start().await;
    let vonage = FakeVonage::start(PUBLIC_KEY_PEM).await;
    let options = Options { telephony: live_telephony(&twilio, &vonage), ..Options::default() };
    let app = TestApp::spawn_with_serve(backend, options, |s| s.allow_private_targets = true).await?;
    let endpoint = ContextEndpoint::start().await;
    let url = endpoint.at("/caller", Answer::Json(json!({"name": "Kian"})));
    twilio.own("+14155550100");
    let (_, conn) = app
        .post(
            "/v1/account_connections/create",
            json!({"type": "account_connection_twilio",
                   "credentials": {"twilio_account_sid": twilio.state.account_sid,
                                   "twilio_auth_token": twilio.state.auth_token}}),
        )
        .await;
    let agent = json!({"prompt": {"content": "You are talking to ${name} from ${city}.", "context_endpoint": url},
                       "voice": {"type": "voice_vocode", "voice_id": "joe"}});
    let (status, number) = app
        .post(
            "/v1/numbers/link",
            json!({"phone_number": "+14155550100", "telephony_account_connection": conn["id"], "inbound_agent": agent}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{number}");
    let example = json!({"example_context": {"name": "Example Name", "city": "Paris"}});
    assert_eq!(app.post("/v1/numbers/update?phone_number=14155550100", example).await.0, StatusCode::OK);
    Some(Inbound { app, twilio, endpoint })
}

on_both_backends!(inbound => inbound_calls_fill_from_the_numbers_example_context_under_the_endpoints_answer);

/// Inbound calls: the number's `example_context` is the call's context, and the endpoint, asked
/// about the caller, overrides it. The fake Twilio's media stream is not connected here, so the
/// prompt is filled as the conversation fills it when the stream starts.
async fn inbound_calls_fill_from_the_numbers_example_context_under_the_endpoints_answer(w: Inbound) {
    let (status, _) = w.twilio.inbound("+14155550100", "+16505559001", "CAcontext0001").await;
    assert_eq!(status, StatusCode::OK);
    let (_, page) = w.app.get("/v1/calls/list").await;
    let id = uuid::Uuid::parse_str(page["items"][0]["id"].as_str().unwrap()).unwrap();

    let state = &w.app.state;
    let row = state.calls.find(id).await.unwrap().unwrap();
    let talk = state.calls.talk(&row).await.unwrap().unwrap();
    assert_eq!(talk.docs.prompt, "You are talking to ${name} from ${city}.");
    let filled = vocode_server::session::context::apply(state, &row, talk.docs, &talk.prompt).await;
    assert_eq!(filled.prompt, "You are talking to Kian from Paris.");
    let asked = w.endpoint.asked("/caller");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["phone_number"], "16505559001", "asked about the caller");
}

async fn required_context_keys_are_checked_at_create_and_nothing_is_written(w: World) {
    let template = json!({"id": uuid::Uuid::new_v4(), "user_id": uuid::Uuid::new_v4(),
                          "required_context_keys": ["name", "account_id"]});
    let agent = json!({"prompt": {"content": "Call ${name} about ${account_id}.", "prompt_template": template}});
    let app = &w.app;
    let refused = |context: Value| {
        let body = json!({"from_number": w.from, "to_number": "14155550177", "agent": agent, "context": context});
        async move { app.post("/v1/calls/create", body).await }
    };
    let (status, body) = refused(json!({"name": "Ajay"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "context", "account_id"]));
    assert_eq!(body["detail"][0]["type"], "missing");
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("account_id"), "{body}");
    let (status, body) = refused(Value::Null).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let locs: Vec<Value> = body["detail"].as_array().unwrap().iter().map(|d| d["loc"].clone()).collect();
    assert_eq!(locs, [json!(["body", "context", "name"]), json!(["body", "context", "account_id"])]);
    // Nothing written: no call, and not the inline agent or prompt either.
    for list in ["/v1/calls/list", "/v1/agents/list", "/v1/prompts/list"] {
        assert_eq!(w.app.get(list).await.1["total"], 0, "{list}");
    }

    // A stored agent whose prompt has the template, given every key: the call is placed.
    let (_, prompt) = w
        .app
        .post(
            "/v1/prompts/create",
            json!({"content": "Call ${name} about ${account_id}.", "prompt_template": template}),
        )
        .await;
    let voice = json!({"type": "voice_vocode", "voice_id": "joe"});
    let (status, stored) = w
        .app
        .post("/v1/agents/create", json!({"prompt": prompt["id"], "voice": voice, "initial_message": "Hi."}))
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let body =
        json!({"from_number": w.from, "to_number": "14155550177", "agent": stored["id"], "context": {"name": "x"}});
    let (status, refused_body) = w.app.post("/v1/calls/create", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused_body}");
    let id =
        call(&w, "14155550177", stored["id"].clone(), json!({"context": {"name": "Ajay", "account_id": "A-7"}})).await;
    assert_eq!(system_prompt(&w, "Call Ajay").await, "Call Ajay about A-7.");
    assert_eq!(w.app.get("/v1/calls/list").await.1["total"], 1);
    ended(&w.app, &id).await;
}

/// Jobs of `kind` waiting in the queue.
async fn ready(app: &TestApp, kind: &str) -> i64 {
    let mut handle = app.store().read().await.unwrap();
    vocode_server::store::jobs::count(handle.conn(), kind, "ready").await.unwrap()
}

/// Places a call whose person talks (two turns, answered by the fake's default reply) and waits
/// until its conversation is over: its `event_transcript` is queued, in the transaction that
/// queues the detection (the tests run the queue themselves). Only then is the model's `answer`
/// scripted, so that nothing of the conversation's takes it, and the queue run.
async fn detected(w: &World, agent: &Value, marker: &str, answer: Option<&str>, extra: Value) -> Value {
    let id = call(w, "14155550177", agent.clone(), extra).await;
    ended(&w.app, &id).await;
    eventually(Duration::from_secs(20), || async { (ready(&w.app, "deliver_webhook").await >= 1).then_some(()) }).await;
    assert_eq!(asked_with(w, marker).len(), 2, "the conversation's two turns");
    let detections = ready(&w.app, "detect_do_not_call").await;
    assert_eq!(detections, i64::from(answer.is_some()), "a detection is queued only when asked for");
    if let Some(answer) = answer {
        w.openai.then(Script::text(&[answer]));
    }
    w.app.drain_jobs(Duration::ZERO).await;
    assert!(w.receiver.got().iter().any(|r| r.kind() == "event_transcript" && r.call_id() == id));
    assert_eq!(ready(&w.app, "detect_do_not_call").await + ready(&w.app, "deliver_webhook").await, 0);
    get(&w.app, &id).await
}

async fn do_not_call_detection_keeps_the_models_answer(w: World) {
    let (_, own) = w
        .app
        .post(
            "/v1/account_connections/create",
            json!({"type": "account_connection_openai", "credentials": {"openai_api_key": "sk-agents-own"}}),
        )
        .await;
    let agent = |marker: &str| {
        json!({"prompt": {"content": format!("[{marker}] Sell the offer.")}, "initial_message": "Hi, it's Ana.",
               "openai_account_connection": own["id"], "openai_model_name_override": "gpt-dnc-test",
               "webhook": {"subscriptions": ["event_transcript"], "url": w.receiver.url}})
    };
    let flagged = json!({"run_do_not_call_detection": true});
    let classified = || asked_with(&w, "You classify phone calls");

    let yes = detected(&w, &agent("yes"), "[yes]", Some("True."), flagged.clone()).await;
    assert_eq!(yes["do_not_call_result"], true, "{yes}");
    assert_eq!(yes["run_do_not_call_detection"], true);
    assert_eq!(classified().len(), 1);
    let request = &classified()[0];
    assert_eq!(request.header("authorization"), Some("Bearer sk-agents-own"), "the agent's own key first");
    assert_eq!(request.body["model"], "gpt-dnc-test");
    assert_eq!(request.body["messages"][1]["role"], "user");
    assert_eq!(request.body["messages"][1]["content"], yes["transcript"], "the whole transcript is classified");
    assert!(yes["transcript"].as_str().unwrap().contains("HUMAN: Okay, thank you. Goodbye."), "{yes}");

    let no = detected(&w, &agent("no"), "[no]", Some("false"), flagged.clone()).await;
    assert_eq!(no["do_not_call_result"], false, "{no}");
    assert_eq!(classified().len(), 2);

    // Not asked for: no detection, the result stays null.
    let not_asked = detected(&w, &agent("not asked"), "[not asked]", None, json!({})).await;
    assert_eq!(not_asked["do_not_call_result"], Value::Null, "{not_asked}");
    assert_eq!(classified().len(), 2, "nothing more classified");
}

/// The sandbox carrier with no provider at all: its calls talk with the stand-ins.
async fn stand_ins(backend: Backend) -> Option<TestApp> {
    let telephony = TelephonyArgs { sandbox_time_scale: 0.05, ..TelephonyArgs::default() };
    let options = Options { telephony, conversation: ConversationArgs::default(), ..Options::default() };
    TestApp::spawn_with(backend, options).await
}

on_both_backends!(stand_ins => sandbox_calls_with_no_model_detect_by_phrases_and_hipaa_calls_keep_none);

/// With no model, a sandbox call's detection looks for phrases in what the person said (the
/// sandbox's person never asks not to be called); a HIPAA-compliant call keeps no transcript to
/// classify, and its result stays null.
async fn sandbox_calls_with_no_model_detect_by_phrases_and_hipaa_calls_keep_none(app: TestApp) {
    let (_, number) = app.post("/v1/numbers/buy", json!({"telephony_provider": "twilio", "area_code": "415"})).await;
    let agent = json!({"prompt": {"content": "Sell the offer."}, "initial_message": "Hi, it's Ana."});
    let mut ids = Vec::new();
    for hipaa in [false, true] {
        let body = json!({"from_number": number["number"], "to_number": "14155550177", "agent": agent,
                          "run_do_not_call_detection": true, "hipaa_compliant": hipaa});
        let (status, call) = app.post("/v1/calls/create", body).await;
        assert_eq!(status, StatusCode::OK, "{call}");
        ids.push(call["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        ended(&app, id).await;
    }
    eventually(Duration::from_secs(20), || async { (ready(&app, "detect_do_not_call").await >= 1).then_some(()) })
        .await;
    app.drain_jobs(Duration::ZERO).await;
    let call = get(&app, &ids[0]).await;
    assert!(call["transcript"].as_str().unwrap().contains("HUMAN: Yes, this is Ajay speaking."), "{call}");
    assert_eq!(call["do_not_call_result"], false, "{call}");
    let hipaa = get(&app, &ids[1]).await;
    assert_eq!((hipaa["transcript"].clone(), hipaa["do_not_call_result"].clone()), (Value::Null, Value::Null));
    assert_eq!(ready(&app, "detect_do_not_call").await, 0, "nothing queued for the HIPAA call");
}
