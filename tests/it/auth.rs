//! Authentication: API keys (created, listed and revoked through the command line) and JWT
//! bearers, and the first start of a fresh server.

use std::process::Command;

use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::support::{
    on_both_backends, read, Backend, Options, ServerProcess, TestApp, TestDb, PRIVATE_KEY_PEM, PUBLIC_KEY_PEM,
};

const BIN: &str = env!("CARGO_BIN_EXE_vocode-server");

on_both_backends!(keys_are_checked_and_revocable);

async fn status_with(app: &TestApp, authorization: Option<&str>) -> (StatusCode, Option<String>, serde_json::Value) {
    let mut req = app.client.get(format!("{}/v1/prompts/list", app.base));
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    let res = req.send().await.unwrap();
    let challenge = res.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = read(res).await;
    (status, challenge, body)
}

async fn keys_are_checked_and_revocable(app: TestApp) {
    let (status, _, _) = status_with(&app, Some(&format!("Bearer {}", app.key))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = status_with(&app, Some(&format!("bearer   {}", app.key))).await;
    assert_eq!(status, StatusCode::OK, "the scheme is case-insensitive");

    for bad in
        [None, Some("Basic dXNlcjpwYXNz"), Some("Bearer"), Some("Bearer "), Some("Bearer vk_notakey"), Some("vk_bare")]
    {
        let (status, challenge, body) = status_with(&app, bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{bad:?}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{bad:?}: {body}");
    }

    // A key is stored only as a hash, and stops working once revoked.
    let (user_id, key) = app.new_user("carol").await;
    let (status, _) = app.get_as(&key, "/v1/prompts/list").await;
    assert_eq!(status, StatusCode::OK);
    let mut handle = app.store().read().await.unwrap();
    let keys = vocode_server::store::users::list_keys(handle.conn()).await.unwrap();
    drop(handle);
    let info = keys.iter().find(|k| k.user_id == user_id).unwrap();
    assert!(key.starts_with(&info.display) && info.display.len() < 16);
    let mut tx = app.store().begin().await.unwrap();
    assert!(vocode_server::store::users::revoke_key(tx.conn(), info.id).await.unwrap());
    tx.commit().await.unwrap();
    let (status, body) = app.get_as(&key, "/v1/prompts/list").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["detail"].as_str().unwrap().contains("revoked"));
}

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

fn in_seconds(delta: i64) -> u64 {
    (chrono::Utc::now().timestamp() + delta) as u64
}

#[tokio::test]
async fn jwt_bearers_name_their_user() {
    let secret = "a shared secret for the tests";
    let public = PUBLIC_KEY_PEM;
    let private = PRIVATE_KEY_PEM;
    let Some(app) = TestApp::spawn_with(
        Backend::Sqlite,
        Options { jwt_secret: Some(secret.into()), jwt_public_key_pem: Some(public.into()), ..Options::default() },
    )
    .await
    else {
        return;
    };
    let alice = Uuid::new_v4();
    let hs = |sub: String, exp| {
        encode(&Header::default(), &Claims { sub, exp }, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let token = hs(alice.to_string(), in_seconds(600));
    let (status, prompt) = app.post_as(&token, "/v1/prompts/create", json!({"content": "from a JWT"})).await;
    assert_eq!(status, StatusCode::OK, "{prompt}");
    assert_eq!(prompt["user_id"], alice.to_string(), "sub is the user id");

    // The same user through RS256.
    let rs = encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &Claims { sub: alice.to_string(), exp: in_seconds(600) },
        &EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
    )
    .unwrap();
    let (status, page) = app.get_as(&rs, "/v1/prompts/list").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 1);
    // The default user's key does not see alice's prompt.
    let (_, page) = app.get("/v1/prompts/list").await;
    assert_eq!(page["total"], 0);

    let expired = hs(alice.to_string(), in_seconds(-3600));
    let (status, body) = app.get_as(&expired, "/v1/prompts/list").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["detail"].as_str().unwrap().contains("expired"));
    let wrong_key = encode(
        &Header::default(),
        &Claims { sub: alice.to_string(), exp: in_seconds(600) },
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let (status, _) = app.get_as(&wrong_key, "/v1/prompts/list").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app.get_as(&hs("alice".into(), in_seconds(600)), "/v1/prompts/list").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["detail"].as_str().unwrap().contains("UUID"));
}

#[tokio::test]
async fn jwts_are_not_accepted_unless_configured() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let token = encode(
        &Header::default(),
        &Claims { sub: Uuid::new_v4().to_string(), exp: in_seconds(600) },
        &EncodingKey::from_secret(b"anything"),
    )
    .unwrap();
    let res = app.request(Method::GET, "/v1/prompts/list", Some(&token), None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// Forged JWTs: unsigned (`alg: none`), and HS256 signed with the RS256 public key as the secret
/// (the algorithm-confusion attack), are refused.
#[tokio::test]
async fn forged_jwts_are_refused() {
    let public = PUBLIC_KEY_PEM;
    let Some(app) =
        TestApp::spawn_with(Backend::Sqlite, Options { jwt_public_key_pem: Some(public.into()), ..Options::default() })
            .await
    else {
        return;
    };
    let claims = json!({"sub": Uuid::new_v4().to_string(), "exp": in_seconds(600)}).to_string();
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
    let unsigned = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims));
    let confused = encode(
        &Header::default(),
        &Claims { sub: Uuid::new_v4().to_string(), exp: in_seconds(600) },
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    for token in [unsigned, confused] {
        let res = app.request(Method::GET, "/v1/prompts/list", Some(&token), None).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{token}");
    }
}

fn cli(db: &TestDb, secrets_key: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("SECRETS_KEY", secrets_key)
        .env_remove("VOCODE_API_KEY")
        .output()
        .expect("the binary runs")
}

fn last_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_command_line_manages_keys() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let out = cli(&app.db, &app.secrets_key, &["keys", "create", "--user", "dave"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = last_line(&out);
    assert!(key.starts_with("vk_") && key.len() == 46, "the key alone on the last line: {key}");
    let (status, page) = app.get_as(&key, "/v1/prompts/list").await;
    assert_eq!((status, page["total"].clone()), (StatusCode::OK, json!(0)));

    // A second key for the same user sees the same objects.
    let (_, prompt) = app.post_as(&key, "/v1/prompts/create", json!({"content": "dave's"})).await;
    let second = last_line(&cli(&app.db, &app.secrets_key, &["keys", "create", "--user", "dave"]));
    let (_, page) = app.get_as(&second, "/v1/prompts/list").await;
    assert_eq!(page["items"][0]["id"], prompt["id"]);
    let by_id =
        last_line(&cli(&app.db, &app.secrets_key, &["keys", "create", "--user", prompt["user_id"].as_str().unwrap()]));
    assert_eq!(app.get_as(&by_id, "/v1/prompts/list").await.1["total"], 1);
    let unknown = cli(&app.db, &app.secrets_key, &["keys", "create", "--user", &Uuid::new_v4().to_string()]);
    assert!(!unknown.status.success());

    let list = cli(&app.db, &app.secrets_key, &["keys", "list"]);
    let listing = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(listing.contains("dave"));
    assert!(!listing.contains(&key), "listings never show a key");
    assert!(listing.contains(&key[..10]));
    let key_id =
        listing.lines().find(|l| l.contains(&key[..10])).and_then(|l| l.split_whitespace().next()).unwrap().to_owned();

    let revoked = cli(&app.db, &app.secrets_key, &["keys", "revoke", &key_id]);
    assert!(revoked.status.success());
    assert_eq!(app.get_as(&key, "/v1/prompts/list").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get_as(&second, "/v1/prompts/list").await.0, StatusCode::OK);
    let again = cli(&app.db, &app.secrets_key, &["keys", "revoke", &key_id]);
    assert!(!again.status.success(), "revoking twice says so");

    let users = cli(&app.db, &app.secrets_key, &["users", "list"]);
    let users = String::from_utf8_lossy(&users.stdout).to_string();
    assert!(users.contains("default") && users.contains("dave"));
}

#[tokio::test]
async fn a_fresh_server_prints_a_key_once_or_accepts_the_configured_one() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let first = ServerProcess::start(&db.url, &[]);
    let (base, printed) = (first.base.clone(), first.printed.clone());
    let key = printed
        .split_whitespace()
        .find(|w| w.starts_with("vk_") && w.len() == 46)
        .expect("the banner shows the key")
        .to_owned();
    let client = reqwest::Client::new();
    let status = client.get(format!("{base}/v1/prompts/list")).bearer_auth(&key).send().await.unwrap().status();
    assert_eq!(status, StatusCode::OK);
    drop(first);

    // The second start prints no key, and accepts VOCODE_API_KEY from now on.
    let second = ServerProcess::start(&db.url, &[("VOCODE_API_KEY", "my-own-configured-key-123")]);
    let (base, printed) = (second.base.clone(), second.printed.clone());
    assert!(!printed.contains("vk_"), "{printed}");
    for k in [key.as_str(), "my-own-configured-key-123"] {
        let status = client.get(format!("{base}/v1/prompts/list")).bearer_auth(k).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK);
    }
    drop(second);

    // A fresh database started with VOCODE_API_KEY prints no key at all.
    let db2 = TestDb::create(Backend::Sqlite).await.unwrap();
    let third = ServerProcess::start(&db2.url, &[("VOCODE_API_KEY", "configured-from-the-start-1")]);
    let (base, printed) = (third.base.clone(), third.printed.clone());
    assert!(!printed.contains("vk_"));
    let status = client
        .get(format!("{base}/v1/prompts/list"))
        .bearer_auth("configured-from-the-start-1")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    drop(third);
}

#[test]
fn bad_settings_fail_at_once_with_one_clear_line() {
    let out = Command::new(BIN).args(["migrate"]).env("DATABASE_URL", "mysql://nope").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");

    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", "postgres://root:hunter2@127.0.0.1:1/none")
        .env("SECRETS_KEY", "00".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap();
    assert!(last.starts_with("error: cannot connect to the database"), "{err}");
    assert!(!err.contains("hunter2"), "the password is not printed: {err}");

    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", "postgres://root@127.0.0.1:5432/postgres")
        .env_remove("SECRETS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SECRETS_KEY is required"), "{err}");
}
