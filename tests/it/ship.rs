//! What can be checked of the deployment without a Docker engine, and the interactive docs in a
//! real (headless) browser.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::browser::{require_chromium, OFFLINE};
use crate::support::{Backend, TestApp, OPENAPI_YAML};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn server_variables() -> BTreeSet<String> {
    vocode_server::config::env_names().into_iter().collect()
}

/// Variables of the compose file itself (interpolated into it, not passed to the server; the
/// last is a build argument of the image).
const COMPOSE_ONLY: &[&str] = &["POSTGRES_PASSWORD", "VOCODE_PORT", "LOCAL_SPEECH"];

#[test]
fn the_compose_file_passes_only_the_servers_variables() {
    let compose: Value = serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    let server = &compose["services"]["vocode-server"];
    let env = server["environment"].as_object().expect("an environment map");
    let known = server_variables();
    for name in env.keys() {
        assert!(known.contains(name), "docker-compose.yml passes {name}, which the server does not read");
    }
    for required in ["DATABASE_URL", "SECRETS_KEY", "LISTEN_ADDR"] {
        assert!(env.contains_key(required), "{required}");
    }
    // The server starts once Postgres is healthy, and Postgres keeps its data in a volume.
    assert_eq!(server["depends_on"]["postgres"]["condition"], "service_healthy");
    let postgres = &compose["services"]["postgres"];
    assert!(postgres["healthcheck"]["test"].is_array());
    assert!(postgres["volumes"][0].as_str().unwrap().starts_with("postgres-data:"));
    assert!(compose["volumes"].get("postgres-data").is_some());
    // The published port, the listen address and the image's port agree.
    let listen_port = env["LISTEN_ADDR"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    let published = server["ports"][0].as_str().unwrap();
    assert!(published.ends_with(&format!(":{listen_port}")), "{published} vs {listen_port}");
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains(&format!("EXPOSE {listen_port}")));
    assert!(dockerfile.contains(&format!("ENV LISTEN_ADDR=0.0.0.0:{listen_port}")));
    assert!(env["DATABASE_URL"].as_str().unwrap().starts_with("postgres://vocode:${POSTGRES_PASSWORD}@postgres:5432/"));
}

#[test]
fn the_env_example_names_only_real_settings() {
    let known = server_variables();
    let compose = read("docker-compose.yml");
    let names: Vec<String> = read(".env.example")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().trim().to_owned())
        .collect();
    assert!(names.len() > 10);
    for name in &names {
        if COMPOSE_ONLY.contains(&name.as_str()) {
            assert!(compose.contains(&format!("${{{name}")), "{name} is used by the compose file");
        } else {
            assert!(known.contains(name), ".env.example names {name}, which the server does not read");
            assert!(compose.contains(&format!("${{{name}")), "{name} reaches the server through the compose file");
        }
    }
}

#[test]
fn the_dockerfile_builds_what_the_readme_says_and_runs_unprivileged() {
    let dockerfile = read("Dockerfile");
    let readme = read("README.md");
    let build = dockerfile.lines().find(|l| l.starts_with("RUN cargo build")).expect("a cargo build step");
    let command = build.trim_start_matches("RUN ").trim();
    assert!(readme.contains(command), "README.md shows the image's build command: {command}");
    assert!(readme.contains("docker compose up"), "README.md shows how to start it");
    let user = dockerfile.lines().rfind(|l| l.starts_with("USER ")).expect("a USER");
    assert_ne!(user.trim(), "USER root");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"vocode-server\", \"healthcheck\""));
    assert!(dockerfile.lines().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage");
    // With LOCAL_SPEECH=1 the speech stage runs the install command into the folder the image
    // copies, which is the server's SPEECH_DIR.
    let copied = dockerfile.lines().find(|l| l.starts_with("COPY --from=speech ")).expect("the speech stage's files");
    let speech_dir = copied.split_whitespace().last().unwrap();
    assert!(dockerfile.contains(&format!("ENV SPEECH_DIR={speech_dir}")), "{speech_dir}");
    assert!(dockerfile.contains(&format!("SPEECH_DIR={speech_dir} ")) && dockerfile.contains("scripts/install-speech"));
    assert!(readme.contains("LOCAL_SPEECH=1"), "README.md shows how to build the image with the local speech");
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            let path = format!("{}/{source}", env!("CARGO_MANIFEST_DIR"));
            assert!(std::path::Path::new(&path).exists(), "the Dockerfile copies {source}, which does not exist");
        }
    }
}

#[tokio::test]
async fn the_healthcheck_command_knows_a_live_server_from_a_dead_one() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    let bin = env!("CARGO_BIN_EXE_vocode-server");
    let run = |url: String| async move {
        tokio::process::Command::new(bin).args(["healthcheck", "--url", &url]).output().await.unwrap()
    };
    assert!(run(format!("{}/health", app.base)).await.status.success());
    let dead = run("http://127.0.0.1:9/health".into()).await;
    assert!(!dead.status.success());
    assert_eq!(String::from_utf8_lossy(&dead.stderr).trim().lines().count(), 1);
}

#[tokio::test]
async fn the_docs_render_every_operation_in_a_browser_with_no_internet() {
    let Some(browser) = require_chromium("the docs page") else { return };
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    let profile = std::env::temp_dir().join(format!("vocode-chromium-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("{}/docs", app.base);
    let out = tokio::process::Command::new(browser)
        // Nothing but this server may be reached: the page must need no internet.
        .args(OFFLINE)
        .args(["--virtual-time-budget=20000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .output()
        .await
        .expect("Chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    let spec: Value = serde_norway::from_str(OPENAPI_YAML).unwrap();
    let mut missing = Vec::new();
    let mut rendered = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            rendered += 1;
            let shown = dom.contains(&format!("data-path=\"{path}\"")) && dom.contains(&format!("opblock-{method}"));
            if !shown {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "not rendered: {missing:?} (of {rendered}); the page: {}", &dom[..dom.len().min(2000)]);
    assert!(dom.contains("Vocode API (vocode-server)"), "the document's title is shown");
}
