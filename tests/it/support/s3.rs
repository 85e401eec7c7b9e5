//! A real S3-compatible server for the recordings tests: moto's server mode (`moto_server`, from
//! PyPI, pinned in `tests/s3/requirements.txt` and installed by `scripts/test` into
//! `target/s3-venv`), started on a free port for one test, with a fresh bucket made through the
//! S3 API. Without it the tests that need it say SKIPPED; with `REQUIRE_S3=1` they fail instead.
//!
//! The tests look into the bucket with plain S3 requests of their own, not through the server's
//! client: moto checks no signature, but takes the caller from the access key the
//! `Authorization` header names (an anonymous caller may not read the server's objects).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vocode_server::config::TelephonyArgs;

use super::eventually;

/// The access key the servers under test sign with (moto takes any).
const KEY_ID: &str = "AKIAVOCODETESTS";
const SECRET: &str = "vocode-test-secret";
const REGION: &str = "eu-west-1";

/// moto's server: `MOTO_SERVER`, else the one `scripts/test` installs, else one on the `PATH`.
fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let installed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/s3-venv/bin/moto_server");
    if installed.is_file() {
        return Some(installed);
    }
    let on_path = Command::new("which").arg("moto_server").output().ok().filter(|o| o.status.success())?;
    Some(PathBuf::from(String::from_utf8_lossy(&on_path.stdout).trim()))
}

/// An S3-compatible server of this test's own, with one empty bucket.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub bucket: String,
    client: reqwest::Client,
}

impl S3Server {
    /// Starts moto and makes the bucket; `None` (the test is skipped, and says so) when moto is
    /// not installed, unless `REQUIRE_S3=1`.
    pub async fn start(what: &str) -> Option<S3Server> {
        let Some(program) = moto_server() else {
            assert!(
                std::env::var("REQUIRE_S3").as_deref() != Ok("1"),
                "REQUIRE_S3=1 but moto_server is not installed (scripts/test installs it into target/s3-venv)"
            );
            eprintln!(
                "SKIPPED: no S3-compatible server (moto_server; scripts/test installs it): {what} was not tested"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: format!("recordings-{}", uuid::Uuid::new_v4().simple()),
            client: reqwest::Client::new(),
        };
        eventually(Duration::from_secs(30), || async {
            server.client.get(&server.endpoint).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        let made = server
            .signed(reqwest::Method::PUT, &server.bucket_url())
            .body(format!("<CreateBucketConfiguration><LocationConstraint>{REGION}</LocationConstraint></CreateBucketConfiguration>"))
            .send()
            .await
            .unwrap();
        assert!(made.status().is_success(), "the bucket is made: {}", made.status());
        Some(server)
    }

    /// A request as the servers under test make them, signature aside.
    fn signed(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let credential = format!("Credential={KEY_ID}/20260101/{REGION}/s3/aws4_request");
        let authorization = format!("AWS4-HMAC-SHA256 {credential}, SignedHeaders=host, Signature=0");
        self.client.request(method, url).header("authorization", authorization)
    }

    fn bucket_url(&self) -> String {
        format!("{}/{}", self.endpoint, self.bucket)
    }

    /// The settings that send a server's recordings to this bucket, under `prefix`.
    pub fn env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("RECORD_ON_SERVER", "true".into()),
            ("RECORDINGS_URL", format!("s3://{}/{prefix}", self.bucket)),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The same, on an in-process server's settings.
    pub fn configure(&self, telephony: &mut TelephonyArgs, prefix: &str) {
        telephony.record_on_server = true;
        telephony.recordings_url = Some(format!("s3://{}/{prefix}", self.bucket));
        telephony.aws_endpoint_url = Some(self.endpoint.clone());
        telephony.aws_region = Some(REGION.into());
        telephony.aws_access_key_id = Some(KEY_ID.into());
        telephony.aws_secret_access_key = Some(SECRET.into());
        telephony.aws_allow_http = true;
    }

    /// The keys of the bucket's objects under `prefix`, in order, through the S3 API.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self
            .signed(reqwest::Method::GET, &self.bucket_url())
            .query(&[("list-type", "2"), ("prefix", prefix)])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        listed.split("<Key>").skip(1).map(|k| k.split("</Key>").next().unwrap().to_owned()).collect()
    }

    /// An object's bytes, through the S3 API.
    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let got = self.signed(reqwest::Method::GET, &format!("{}/{key}", self.bucket_url())).send().await.unwrap();
        let status = got.status();
        let body = got.bytes().await.unwrap().to_vec();
        assert!(
            status.is_success() || status == reqwest::StatusCode::NOT_FOUND,
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        status.is_success().then_some(body)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
