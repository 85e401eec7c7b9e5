//! Secrets stay secret: a full run of the binary at debug level with JSON logs — every kind of
//! stored secret created, a call placed, answered and ended through the carrier, a webhook
//! delivered, a JWT used, wrong keys tried — and then the logs and every API answer are searched
//! for every secret the run configured. None may appear; the API key only as its public prefix.

use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    eventually, hex_key, Backend, FakeTwilio, Receiver, ServerProcess, TestDb, PRIVATE_KEY_PATH, PRIVATE_KEY_PEM,
};

const OUR_NUMBER: &str = "+14155550100";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_reaches_the_logs_or_the_api() {
    let Some(db) = TestDb::create(Backend::Postgres).await else { return };
    let twilio = FakeTwilio::start().await;
    twilio.own(OUR_NUMBER);
    let receiver = Receiver::start().await;
    let hook = receiver.url.clone();

    let key = vocode_server::crypto::generate_api_key().key;
    let secrets_key = hex_key();
    let jwt_secret = "jwt-signing-secret-0f9e8d7c6b5a";
    let server_twilio_token = "server-twilio-token-5a4b3c2d1e";
    let vonage_secret = "vonage-api-secret-3c4d5e6f7a";
    let vonage_signature_secret = "vonage-signature-secret-8b9c0d1e2f";
    let deepgram_key = "deepgram-secret-2d3e4f5a6b";
    let server_openai_key = "sk-server-openai-secret-4e5f6a7b";
    let server_eleven_key = "server-eleven-secret-8c9d0e1f";
    let azure_key = "azure-speech-secret-0a1b2c3d";
    let server = ServerProcess::start(
        &db.url,
        &[
            ("SECRETS_KEY", &secrets_key),
            ("VOCODE_API_KEY", &key),
            ("JWT_SECRET", jwt_secret),
            ("CARRIER_MODE", "live"),
            ("TWILIO_API_BASE_URL", &twilio.base),
            ("TWILIO_ACCOUNT_SID", "AC11111111111111111111111111111111"),
            ("TWILIO_AUTH_TOKEN", server_twilio_token),
            ("VONAGE_APPLICATION_ID", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
            ("VONAGE_PRIVATE_KEY_PATH", PRIVATE_KEY_PATH),
            ("VONAGE_API_KEY", "vonage-key"),
            ("VONAGE_API_SECRET", vonage_secret),
            ("VONAGE_SIGNATURE_SECRET", vonage_signature_secret),
            ("DEEPGRAM_API_KEY", deepgram_key),
            ("OPENAI_API_KEY", server_openai_key),
            ("ELEVENLABS_API_KEY", server_eleven_key),
            ("AZURE_SPEECH_KEY", azure_key),
            ("AZURE_SPEECH_REGION", "eastus"),
            ("ALLOW_PRIVATE_TARGETS", "true"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "debug"),
        ],
    );
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let answers = Arc::new(Mutex::new(String::new()));
    let call_api = |method: Method, path: String, bearer: String, body: Option<Value>| {
        let (client, base, answers) = (client.clone(), base.clone(), answers.clone());
        async move {
            let mut req = client.request(method, format!("{base}{path}")).bearer_auth(bearer);
            if let Some(body) = body {
                req = req.json(&body);
            }
            let res = req.send().await.unwrap();
            let status = res.status();
            let text = res.text().await.unwrap();
            answers.lock().unwrap().push_str(&text);
            (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
        }
    };
    let post = |path: &str, body: Value| call_api(Method::POST, path.to_owned(), key.clone(), Some(body));
    let get = |path: String| call_api(Method::GET, path, key.clone(), None);

    // Every kind of stored secret.
    let openai_key = "sk-openai-secret-7f6e5d4c3b2a";
    let pinecone_key = "pinecone-secret-9a8b7c6d5e4f";
    let eleven_key = "eleven-secret-1b2c3d4e5f6a";
    let play_key = "playht-secret-6f5e4d3c2b1a";
    let (_, conn) = post(
        "/v1/account_connections/create",
        json!({"type": "account_connection_twilio",
               "credentials": {"twilio_account_sid": twilio.state.account_sid, "twilio_auth_token": twilio.state.auth_token}}),
    )
    .await;
    let (_, openai) = post(
        "/v1/account_connections/create",
        json!({"type": "account_connection_openai", "credentials": {"openai_api_key": openai_key}}),
    )
    .await;
    let (_, vdb) = post(
        "/v1/vector_databases/create",
        json!({"type": "vector_database_pinecone", "index": "i", "api_key": pinecone_key, "api_environment": "e"}),
    )
    .await;
    let (_, eleven) =
        post("/v1/voices/create", json!({"type": "voice_eleven_labs", "voice_id": "v", "api_key": eleven_key})).await;
    let (status, _) = post(
        "/v1/voices/create",
        json!({"type": "voice_play_ht", "voice_id": "v", "api_user_id": "u", "api_key": play_key}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post("/v1/account_connections/update?id=not-a-uuid", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a bad request is logged too");
    let (status, _) =
        post("/v1/numbers/link", json!({"phone_number": OUR_NUMBER, "telephony_account_connection": conn["id"]})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, agent) = post(
        "/v1/agents/create",
        json!({"prompt": {"content": "hi"}, "voice": eleven["id"], "vector_database": vdb["id"],
               "openai_account_connection": openai["id"],
               "webhook": {"subscriptions": ["event_phone_call_connected", "event_phone_call_ended"], "url": hook}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{agent}");

    // A call's life, through the carrier, with its webhooks.
    let (status, call) =
        post("/v1/calls/create", json!({"from_number": OUR_NUMBER, "to_number": "16505550142", "agent": agent["id"]}))
            .await;
    assert_eq!(status, StatusCode::OK, "{call}");
    let sid = call["telephony_id"].as_str().unwrap().to_owned();
    assert_eq!(twilio.status(&sid, "in-progress", &[]).await, StatusCode::NO_CONTENT);
    let (status, _) = twilio.twiml(&sid).await;
    assert_eq!(status, StatusCode::OK);
    let forged = twilio.post_signed(twilio.call(&sid).field("StatusCallback").unwrap(), &[], Some("wrong-token")).await;
    assert_eq!(forged.0, StatusCode::FORBIDDEN);
    let (status, _) = post(&format!("/v1/calls/end?id={}", call["id"].as_str().unwrap()), json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    eventually(std::time::Duration::from_secs(30), || async { (receiver.got().len() >= 2).then_some(()) }).await;
    get(format!("/v1/calls?id={}", call["id"].as_str().unwrap())).await;
    get("/v1/calls/list".into()).await;
    get(format!("/v1/agents?id={}", agent["id"].as_str().unwrap())).await;
    get("/v1/account_connections/list".into()).await;
    get("/v1/voices/list".into()).await;
    get("/v1/vector_databases/list".into()).await;

    // A JWT, a wrong key, a revoked-looking key.
    #[derive(serde::Serialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub: uuid::Uuid::new_v4().to_string(), exp: (chrono::Utc::now().timestamp() + 600) as u64 },
        &jsonwebtoken::EncodingKey::from_secret(jwt_secret.as_bytes()),
    )
    .unwrap();
    let (status, _) = call_api(Method::GET, "/v1/prompts/list".into(), token.clone(), None).await;
    assert_eq!(status, StatusCode::OK);
    // The key with its last character changed (to one it is not).
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let wrong_key = format!("{}{last}", &key[..key.len() - 1]);
    let (status, _) = call_api(Method::GET, "/v1/prompts/list".into(), wrong_key.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The webhook signing secret, as an operator reads it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vocode-server"))
        .args(["users", "webhook-secret", "--user", "default"])
        .env("DATABASE_URL", &db.url)
        .env("SECRETS_KEY", &secrets_key)
        .output()
        .unwrap();
    let whsec = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_owned();
    assert!(whsec.starts_with("whsec_"), "{whsec}");
    let signature = receiver.got()[0].headers["webhook-signature"].clone();

    let logs = server.logs();
    assert!(logs.lines().count() > 50, "a debug run logs plenty: {} lines", logs.lines().count());
    for line in logs.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("LOG_FORMAT=json: {e}: {line}"));
    }
    let answers = answers.lock().unwrap().clone();
    let pem = PRIVATE_KEY_PEM.lines().nth(1).unwrap().to_owned();
    let secrets = [
        ("the API key", key.clone()),
        ("a wrong API key", wrong_key.clone()),
        ("SECRETS_KEY", secrets_key.clone()),
        ("JWT_SECRET", jwt_secret.to_owned()),
        ("a JWT", token.clone()),
        ("TWILIO_AUTH_TOKEN", server_twilio_token.to_owned()),
        ("VONAGE_API_SECRET", vonage_secret.to_owned()),
        ("VONAGE_SIGNATURE_SECRET", vonage_signature_secret.to_owned()),
        ("DEEPGRAM_API_KEY", deepgram_key.to_owned()),
        ("OPENAI_API_KEY", server_openai_key.to_owned()),
        ("ELEVENLABS_API_KEY", server_eleven_key.to_owned()),
        ("AZURE_SPEECH_KEY", azure_key.to_owned()),
        ("an account connection's Twilio token", twilio.state.auth_token.clone()),
        ("an OpenAI key", openai_key.to_owned()),
        ("a Pinecone key", pinecone_key.to_owned()),
        ("an ElevenLabs key", eleven_key.to_owned()),
        ("a Play.ht key", play_key.to_owned()),
        ("the webhook signing secret", whsec.clone()),
        ("the webhook signing secret's key", whsec.trim_start_matches("whsec_").to_owned()),
        ("a webhook signature", signature.trim_start_matches("v1,").to_owned()),
        ("a private key", pem),
    ];
    for (what, secret) in &secrets {
        assert!(!logs.contains(secret.as_str()), "{what} is in the logs");
        assert!(!answers.contains(secret.as_str()), "{what} is in an API answer");
    }
    // The key's public prefix is how it is named in logs, and nothing longer.
    let prefix = vocode_server::crypto::display_prefix(&key);
    assert!(key.starts_with(&prefix) && prefix.len() < key.len() / 2, "{prefix}");
    assert!(!logs.contains(&key[..prefix.len() + 4]), "more of the key than its prefix is logged");
    assert!(!answers.contains(&key[..prefix.len() + 4]), "more of the key than its prefix is shown");
    eprintln!(
        "secrets: {} log lines and {} bytes of answers searched for {} secrets",
        logs.lines().count(),
        answers.len(),
        secrets.len()
    );
}
